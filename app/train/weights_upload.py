"""The "Import the weights file" uploader: a weights file carried in by hand, checked and kept.

Used by the Train page (a backbone whose weights need the network, or any file for the chosen
backbone) and by a failed run that needed the network (``app.monitor.run_fixes``), where it names
the exact file Keras wants and where to download it.
"""

from __future__ import annotations

import streamlit as st

from app.views.text import md_escape
from core.errors import StudioError


def wanted_text(backbone: str, image_size: int | None) -> str | None:
    """ "Keras wants FILE (download it from URL...)" for a Keras backbone; ``None`` otherwise."""
    from core.models.weights_store import wanted_file

    try:
        pin = wanted_file(backbone, image_size)
    except Exception:  # building the model to ask Keras failed: the uploader still works
        return None
    if pin is None:
        return None
    return (
        f"Keras wants `{md_escape(pin.file_name, inline=True)}`: download it from "
        f"{pin.url} on a machine with internet, then drop it here."
    )


def registry_text(backbone: str) -> str | None:
    """ "Keras wants FILE" from the registry's record of the files Keras caches: no model is
    built (the address comes with a run that failed offline, which asks Keras itself)."""
    from core.models.backbones import SOURCE_KERAS, get_backbone

    spec = get_backbone(backbone)
    if spec.imagenet_source != SOURCE_KERAS or not spec.imagenet_files:
        return None
    at_default = [f for f in spec.imagenet_files if f"_{spec.default_size}_" in f]
    name = (at_default or list(spec.imagenet_files))[0]  # the file for the default size
    return (
        f"Keras wants `{md_escape(name, inline=True)}`: carry it in from a "
        "machine with internet, then drop it here."
    )


def weights_uploader(
    backbone: str, key: str, image_size: int | None = None, name_the_file: bool = True
) -> bool:
    """A file uploader labelled "Import the weights file"; returns whether a file was imported.

    Keras' own ImageNet files are recognised by name (and checked against Keras' hash); any
    other weights file is checked to load into ``backbone`` and kept under its file name.
    ``name_the_file`` says which file Keras wants: asking Keras builds the model, which loads
    TensorFlow into the server, so the Train form leaves it to a run that failed offline.
    """
    from core.models.imported_weights import KIND_IMAGENET
    from core.models.weights_store import import_upload, recognise_keras_file

    wanted = wanted_text(backbone, image_size) if name_the_file else registry_text(backbone)
    upload = st.file_uploader(
        "Import the weights file",
        type=["h5", "keras"],
        key=key,
        help=wanted
        or "A Keras weights file (.weights.h5, .h5 or .keras) saved from this "
        "backbone; it is checked to load before it is kept.",
    )
    if wanted:
        st.caption(wanted)
    if upload is None:
        return False
    done_key = f"{key}_done"
    if st.session_state.get(done_key) == upload.file_id:
        return False  # imported on an earlier rerun
    try:
        with st.spinner(f"Checking {upload.name}…"):
            known = recognise_keras_file(upload.name) is not None
            item = import_upload(upload.name, upload.getvalue(), None if known else backbone)
    except StudioError as exc:
        st.error(str(exc), icon=":material/error:")
        return False
    st.session_state[done_key] = upload.file_id
    use = "ImageNet weights" if item.kind == KIND_IMAGENET else f"weights “{item.name}”"
    st.success(
        f"Imported {md_escape(item.name, inline=True)} for {item.backbone}: {item.note}. "
        f"Its {use} now work offline.",
        icon=":material/check_circle:",
    )
    return True
