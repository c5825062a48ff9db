"""Train: configure a run (backbone, weights, mode, hyper-parameters), launch it and watch it."""

from __future__ import annotations

import streamlit as st

from app import widgets
from app.views import dashboard
from core.config import AUGMENTATIONS, MODE_HELP, MODES, RunConfig
from core.data.builtin import guess_num_classes
from core.errors import StudioError
from core.lint import count_train_images, lint_config
from core.models.backbones import REGISTRY
from core.training.compare import submit_compare_all
from core.training.sources import input_path

st.title("Train")
queue = widgets.job_queue()
LRS = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
CACHE_HELP = (
    "Run the frozen base once per image (with augmentation: once per augmented view) and train "
    "on the stored features: much faster. Off: the base runs on every image in every epoch."
)
DEFAULTS = RunConfig()

setup, watch = st.columns([5, 7], gap="large")
with setup.container(height=620, border=False):  # scrolls; the buttons below stay in view
    st.subheader("Model", divider="gray")
    name = st.selectbox(
        "Backbone", list(REGISTRY), key="backbone", format_func=dashboard.backbone_label
    )
    spec = REGISTRY[name]
    mode = st.radio("Mode", MODES, key="mode", captions=[MODE_HELP[m] for m in MODES])
    weights = st.radio(
        "Weights", ["imagenet", "none"], horizontal=True, key="weights", disabled=mode == "scratch"
    )
    weights = "none" if mode == "scratch" else weights
    if weights == "imagenet" and spec.weights_status() == "needs network":
        st.warning(
            f"{widgets.md_escape(name)}'s ImageNet weights are not cached: "
            "the run needs network access."
        )
    st.subheader("Data", divider="gray")
    data = st.selectbox(
        "Data source",
        dashboard.data_choices(st.session_state.get(widgets.DATA_SOURCE), queue.store.list_runs()),
        key="data",
        accept_new_options=True,
        help="Chosen on the Data page, a built-in, a folder, a .zip or kaggle:OWNER/SLUG",
    )
    c = st.columns(2)
    size = c[0].number_input(
        "Image size", 16, 1024, None, key="size", placeholder=f"{spec.default_size} (default)"
    )
    batch = c[1].number_input("Batch size", 1, 1024, 32, key="batch")
    val_split = c[0].number_input("Validation split", 0.05, 0.9, 0.2, 0.05, key="val_split")
    seed = c[1].number_input("Seed", 0, 2**31 - 1, 42, key="seed")
    t = st.columns(2)
    augment = t[0].toggle("Augmentation", DEFAULTS.augment, key="augment")
    cache = t[1].toggle(
        "Feature cache", DEFAULTS.feature_cache == "auto", key="cache", help=CACHE_HELP
    )
    augs = st.pills("Augmentations", AUGMENTATIONS, selection_mode="multi", default=AUGMENTATIONS,
                    key="augs", disabled=not augment, label_visibility="collapsed")  # fmt: skip
    st.subheader("Schedule", divider="gray")
    c = st.columns(2)
    epochs = c[0].number_input("Epochs (head)", 1, 1000, 3, key="epochs")
    lr = c[1].select_slider("Learning rate", LRS, 1e-3, format_func="{:g}".format, key="lr")
    phase2 = "Phase 2 of fine_tuning and full_fine_tuning (also used by Compare all modes)"
    ft_epochs = c[0].number_input("Fine-tune epochs", 0, 1000, 3, key="ft", help=phase2)
    ft_lr = c[1].select_slider(
        "Fine-tune LR", LRS, 1e-5, format_func="{:g}".format, key="ft_lr", help=phase2
    )
    unfreeze = c[0].number_input(
        "Unfreeze depth", 1, 10_000, None, key="unfreeze", placeholder="last block",
        help="fine_tuning: how many trailing base layers phase 2 trains",
    )  # fmt: skip
    config = RunConfig(
        backbone=name, weights=weights, mode=mode, data=data or "", image_size=size,
        batch_size=batch, epochs=epochs, fine_tune_epochs=ft_epochs, lr=lr, fine_tune_lr=ft_lr,
        unfreeze=unfreeze, augment=augment, augmentations=tuple(augs or ()),
        val_split=val_split, seed=seed, feature_cache="auto" if cache else "off",
    )  # fmt: skip
    # What the run will read, from the trainer's own rule: the toggles never say the opposite.
    st.caption(f"Training inputs: {widgets.md_escape(input_path(config).reason)}.")
    widgets.layer_preview(name, size, mode, unfreeze, guess_num_classes(config.data))
with setup:
    b = st.columns(2)
    launch = b[0].button(
        "Launch", type="primary", key="launch", on_click=widgets.new_click_key, args=("launch",),
        icon=":material/play_arrow:", width="stretch",
    )  # fmt: skip
    compare = b[1].button(
        "Compare all modes", key="compare", on_click=widgets.new_click_key, args=("compare",),
        icon=":material/compare_arrows:", width="stretch",
    )  # fmt: skip
    scratch = st.checkbox("Include a from-scratch baseline in the comparison", key="scratch")
    try:
        if launch:
            st.session_state[widgets.RUN_ID] = queue.submit(config, key=widgets.click_key("launch"))
        if compare:
            ids = submit_compare_all(queue, config, scratch, key=widgets.click_key("compare"))
            st.session_state[widgets.RUN_ID] = ids[0]
            st.toast(f"Queued {len(ids)} runs: same data and seed, one per mode.")
    except StudioError as exc:
        widgets.show_error(exc)
    train_images = count_train_images(config, scan=False)  # built-ins: from their description
    if train_images is None and data and data == st.session_state.get(widgets.DATA_SOURCE):
        try:  # the source the Data page loaded: its index is cached
            train_images = len(widgets.load_data(data, val_split, seed).train_paths)
        except StudioError:
            pass
    for finding in lint_config(config, train_images):
        (st.warning if finding["level"] == "warning" else st.caption)(
            widgets.md_escape(finding["message"])
        )

with watch:
    widgets.follow_run(queue)
