"""The Train page's form: its sections (model, data, schedule) with the checks of their settings,
Launch and Compare all modes; its values restored from and kept in the runs folder's draft; the
layer preview of the model it describes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import streamlit as st

from app import navigation, widgets
from app.loaders import layer_preview_data, load_data
from app.navigation import chosen_data
from app.train.tools import imbalance_warning, lr_finder
from app.train.weights_upload import weights_uploader
from app.views import dashboard
from app.views.labels import mode_title, modes_in_words, phase_title
from app.views.text import md_escape
from app.widgets import show_error
from core.config import (
    AUGMENTATIONS,
    CLASS_WEIGHT_CHOICES,
    CLASS_WEIGHT_HELP,
    DISTRIBUTE_CHOICES,
    DISTRIBUTE_HELP,
    MIXED_PRECISION_CHOICES,
    MIXED_PRECISION_HELP,
    MODE_HELP,
    MODES,
    RunConfig,
)
from core.data.builtin import guess_num_classes
from core.errors import StudioError
from core.lint import count_train_images, lint_config
from core.models.backbones import REGISTRY
from core.models.imported_weights import imported_names
from core.paths import runs_root
from core.training.compare import submit_compare_all
from core.training.input_path import input_path

if TYPE_CHECKING:
    from core.training.jobs import JobQueue

LRS = dashboard.LRS
CACHE_HELP = (
    "Run the frozen base once per image (with augmentation: once per augmented view) and train "
    "on the stored features: much faster. Off: the base runs on every image in every epoch."
)

DRAFT = "train_draft_saved"  # session key: the Train form as last written to the draft


def restore_train_form() -> None:
    """Give every Train form widget without a value the runs folder's draft value (or, with no
    draft, the defaults on the chosen data): a refresh, a server restart or a visit to another
    page (Streamlit forgets the widgets of pages not shown) keeps the form as it was left."""
    from app.views.dashboard import FORM_FIELDS, train_form_values
    from core.config import DEFAULT_DATA
    from core.runs.drafts import load_draft

    missing = [key for key in FORM_FIELDS if key not in st.session_state]
    if not missing:
        return
    draft = load_draft(runs_root()) or RunConfig(data=chosen_data() or DEFAULT_DATA)
    values = train_form_values(draft)
    for key in missing:
        st.session_state[key] = values[key]


def remember_train_form(config: RunConfig) -> None:
    """Keep ``config`` as the runs folder's draft when it changed (one small atomic write)."""
    from core.runs.drafts import save_draft

    saved = config.to_dict()
    if st.session_state.get(DRAFT) != saved:
        save_draft(runs_root(), config)
        st.session_state[DRAFT] = saved


def layer_preview(
    backbone: str, size: int | None, mode: str, unfreeze: int | None, classes: int
) -> None:
    """A lazy expander: per phase trainable/frozen parameters and the base layers that train."""
    box = st.expander("Trainable layers and parameters", key="preview", on_change="rerun")
    if not box.open:
        return  # nothing is built while the expander is closed
    with box:
        try:
            _layer_table(layer_preview_data(backbone, size, mode, unfreeze, classes))
        except StudioError as exc:
            show_error(exc)


def _layer_table(summary: dict[str, Any]) -> None:
    from app.views.dashboard import format_count

    cols = st.columns(len(summary["phases"]))
    for col, phase in zip(cols, summary["phases"], strict=True):
        frozen = phase["frozen_params"]
        statistics = phase["non_trainable_params"] - frozen
        col.metric(
            f"{phase_title(phase['phase'])} · trainable",
            format_count(phase["trainable_params"]),
            # BatchNormalization statistics are never trained by gradient, but nothing is
            # frozen in a from-scratch run: "42.02k frozen" would say otherwise
            f"{format_count(frozen)} frozen" if frozen else "nothing frozen",
            delta_color="off",
            delta_arrow="off",
            help=f"{phase['trainable_params']:,} trainable, {frozen:,} frozen parameters"
            + (f", {statistics:,} BatchNormalization statistics" if statistics else ""),
        )
    layers = summary["layers"]
    trainable = summary["trainable_base_layers"]
    unfrozen = summary["phases"][-1]["unfrozen_layers"]
    note = "."
    if 0 < trainable < unfrozen:
        note = f" (the last {unfrozen} are unfrozen; their BatchNormalization layers stay frozen)."
    st.caption(f"{trainable} of {summary['base_layers']} base layers train{note}")
    first = next((i for i, row in enumerate(layers) if row["trainable_in_fine_tune"]), len(layers))
    st.dataframe(
        layers[max(first - 3, 0) :] if first < len(layers) else layers[-8:],
        hide_index=True,
        height=220,
        column_order=("trainable_in_fine_tune", "name", "type", "params"),
        column_config={
            "trainable_in_fine_tune": st.column_config.CheckboxColumn("trains", width="small"),
            "name": st.column_config.TextColumn("layer"),
            "params": st.column_config.NumberColumn(format="compact", width="small"),
        },
    )


def render(queue: JobQueue) -> RunConfig:
    """The form, section by section (model, data, schedule), each with the checks of its
    settings, then Launch and Compare all modes; returns the config it describes."""
    state = st.session_state
    st.subheader("Model", divider="gray")
    name = st.selectbox(
        "Backbone",
        list(REGISTRY),
        key="backbone",
        format_func=dashboard.backbone_label,
        help="offline: its pretrained weights are here (bundled or cached); imported: weights "
        "you imported are here; needs network: Keras fetches them on first use (or import the "
        "file below).",
    )
    spec = REGISTRY[name]
    st.caption(md_escape(dashboard.backbone_help(name)))
    mode = st.radio(
        "Mode", MODES, key="mode", captions=[MODE_HELP[m] for m in MODES], format_func=mode_title
    )
    scratch_mode = mode == "scratch"
    weight_choices = ["imagenet", "none", *imported_names(name)]
    if state.get("weights") not in weight_choices:  # imported weights of another backbone
        state["weights"] = "imagenet"
    st.radio(
        "Weights", weight_choices, horizontal=True, key="weights", disabled=scratch_mode,
        help="Not used when training from scratch: the from-scratch baseline always starts "
        "from random weights." if scratch_mode else "imagenet: pretrained weights (what "
        "transfer needs); none: random weights; other names: weights files you imported for "
        "this backbone.",
    )  # fmt: skip
    weights = "none" if scratch_mode else state["weights"]
    needs_network = weights == "imagenet" and spec.weights_status() == "needs network"
    if needs_network:
        st.warning(
            f"{md_escape(name)}'s ImageNet weights are not cached: the run needs network "
            "access, or import the weights file."
        )
    with st.expander("Import a weights file", expanded=needs_network):
        if weights_uploader(name, key=f"weights_upload_{name}", name_the_file=False):
            st.rerun()  # the backbone's label and weight choices include it now
    d = st.columns(2)
    distribute = d[0].selectbox(
        "Devices", DISTRIBUTE_CHOICES, key="distribute",
        format_func={"none": "one device", "mirrored": "all (mirrored)"}.__getitem__,
        help=" ".join(f"{k}: {v}" for k, v in DISTRIBUTE_HELP.items()),
    )  # fmt: skip
    mixed_precision = d[1].selectbox(
        "Mixed precision", MIXED_PRECISION_CHOICES, key="mixed_precision",
        help=" ".join(f"{k}: {v}" for k, v in MIXED_PRECISION_HELP.items()),
    )  # fmt: skip
    model_checks = st.container()

    st.subheader("Data", divider="gray")
    choices = dashboard.data_choices(chosen_data(), queue.store.list_runs())
    if state.get("data") and state["data"] not in choices:
        choices.insert(0, state["data"])  # a source typed earlier (kept in the draft)
    data = st.selectbox(
        "Data source",
        choices,
        key="data",
        accept_new_options=True,
        format_func=dashboard.data_label,
        on_change=navigation.choose_form_data,  # the sidebar and the Data page show it too
        help="Chosen on the Data page: a built-in, a folder, a .zip, a Kaggle dataset or your own",
    )
    if data and dashboard.data_label(data) != data:
        st.caption(f"Source: {md_escape(data)}")  # the full path, once, below the name
    c = st.columns(2)
    size = c[0].number_input(
        "Image size", 16, 1024, None, key="size", placeholder=f"{spec.default_size} px",
        help=f"Empty: the backbone's default, {spec.default_size} px.",
    )  # fmt: skip
    batch = c[1].number_input("Batch size", 1, 1024, key="batch")
    val_split = c[0].number_input("Validation split", 0.05, 0.9, step=0.05, key="val_split")
    seed = c[1].number_input("Seed", 0, 2**31 - 1, key="seed")
    t = st.columns(2)
    augment = t[0].toggle("Augmentation", key="augment")
    augs = st.pills("Augmentations", AUGMENTATIONS, selection_mode="multi", key="augs",
                    disabled=not augment, label_visibility="collapsed")  # fmt: skip
    # Whether the cache would be used at all, from the trainer's own rule (with it on).
    probe = RunConfig(mode=mode, augment=augment, augmentations=tuple(augs or ()))
    path = input_path(probe)
    applies, why_not = dashboard.cache_control(path.kind, modes_in_words(path.reason), path.blocker)
    if applies:
        cache = t[1].toggle("Feature cache", key="cache", help=CACHE_HELP)
    else:  # shown OFF and disabled: the setting is kept for when it applies again
        t[1].toggle("Feature cache", False, key="cache_na", disabled=True, help=why_not)
        cache = bool(state.get("cache", True))
    class_weight = st.radio(
        "Class weights", CLASS_WEIGHT_CHOICES, horizontal=True, key="class_weight",
        help=" ".join(f"{k}: {v}" for k, v in CLASS_WEIGHT_HELP.items()),
    )  # fmt: skip
    imbalance = imbalance_warning(data, val_split, seed)
    if imbalance and class_weight == "none":
        st.warning(
            f"{md_escape(imbalance)} Suggested: **Class weights: balanced**, so each "
            "class counts as much in the loss."
        )
    elif imbalance:
        st.caption("Balanced class weights: suited to this data's class imbalance.")
    data_checks = st.container()

    st.subheader("Schedule", divider="gray")
    c = st.columns(2)
    epochs = c[0].number_input("Epochs (head)", 1, 1000, key="epochs")
    lr = c[1].select_slider("Learning rate", LRS, format_func="{:g}".format, key="lr")
    phase2 = "Phase 2 of Fine-tuning and Full fine-tuning (also used by Compare all modes)"
    ft_epochs = c[0].number_input("Fine-tune epochs", 0, 1000, key="ft", help=phase2)
    ft_lr = c[1].select_slider(
        "Fine-tune LR", LRS, format_func="{:g}".format, key="ft_lr", help=phase2
    )
    unfreeze = c[0].number_input(
        "Unfreeze depth", 1, 10_000, None, key="unfreeze", placeholder="last block",
        help="Fine-tuning: how many trailing base layers phase 2 unfreezes (BatchNormalization "
        "layers among them stay frozen). Also used by Compare all modes.",
    )  # fmt: skip
    config = RunConfig(
        backbone=name, weights=weights, mode=mode, data=data or "", image_size=size,
        batch_size=batch, epochs=epochs, fine_tune_epochs=ft_epochs, lr=lr, fine_tune_lr=ft_lr,
        unfreeze=unfreeze, augment=augment, augmentations=tuple(augs or ()),
        val_split=val_split, seed=seed, feature_cache="auto" if cache else "off",
        class_weight=class_weight, distribute=distribute, mixed_precision=mixed_precision,
    )  # fmt: skip
    # The form as the user left it (the weights choice too, which scratch only greys out).
    remember_train_form(config.with_changes(weights=state["weights"]))
    # What the run will read, from the trainer's own rule: the toggles never say the opposite.
    st.caption(f"Training inputs: {md_escape(modes_in_words(input_path(config).reason))}.")
    layer_preview(name, size, mode, unfreeze, guess_num_classes(config.data))
    lr_finder(config)
    schedule_checks = st.container()

    # Checks of the whole config, each in the section of the settings it concerns: above the
    # Launch button, not below it out of sight.
    train_images = count_train_images(config, scan=False)  # built-ins: from their description
    if train_images is None and data and data == chosen_data():
        try:  # the source the Data page loaded: its index is cached
            train_images = len(load_data(data, val_split, seed).train_paths)
        except StudioError:
            pass
    boxes = {"model": model_checks, "data": data_checks, "schedule": schedule_checks}
    for finding in lint_config(config, train_images):
        box = boxes[dashboard.lint_section(finding["code"])]
        (box.warning if finding["level"] == "warning" else box.caption)(
            md_escape(finding["message"])
        )

    b = st.columns([2, 3])  # "Compare all modes" needs the wider half at 1280 px
    launch = b[0].button(
        "Launch", type="primary", key="launch", on_click=widgets.new_click_key, args=("launch",),
        icon=":material/play_arrow:", width="stretch",
    )  # fmt: skip
    compare = b[1].button(
        "Compare all modes", key="compare", on_click=widgets.new_click_key, args=("compare",),
        icon=":material/compare_arrows:", width="stretch",
    )  # fmt: skip
    scratch = st.checkbox(
        "Add a from-scratch baseline",
        key="scratch",
        help="Compare all modes also trains mode scratch (random weights): what transfer buys.",
    )
    try:
        if launch:
            state[navigation.RUN_ID] = queue.submit(config, key=widgets.click_key("launch"))
            state[navigation.FOLLOWED_ACTIVE] = True
        if compare:
            ids = submit_compare_all(queue, config, scratch, key=widgets.click_key("compare"))
            state[navigation.RUN_ID] = ids[0]
            state[navigation.FOLLOWED_ACTIVE] = True  # follow the queue from its first run on
            st.toast(f"Queued {len(ids)} runs: same data and seed, one per mode.")
    except StudioError as exc:
        widgets.show_error(exc)
    return config
