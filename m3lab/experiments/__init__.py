"""Helpers for the walkthrough notebooks and the benchmarks (and anyone's own experiments) — not M3 itself.

Everything a notebook needs that is not the model, its scores or its training: the SMOKE
switch and the settings profiles it picks, where the local data lives, tiny random models
for fast runs, a record of the device and wall times of a run, figure display, memory
probes and a torchrun launcher for measuring cross-device negatives.

    from m3lab import experiments as ex
    run = ex.start_run()                        # starts the clock, prints the profile
    cfg = ex.settings(smoke=dict(n=8), cpu=dict(n=200), gpu=dict(n=5000))
    with run.section("encode"):
        ...
    ex.show(fig)                                # plotly: interactive + a PNG fallback
    run.report()                                # device, versions, wall times (last cell)

Profiles: ``SMOKE=1`` (environment) → ``"smoke"`` (tiny, CPU, under a minute: CI);
otherwise ``"gpu"`` when CUDA is available, else ``"cpu"``. ``M3LAB_PROFILE`` forces one.
"""
from .analysis import (
                       gradient_flow,
                       log_summary,
                       loss_terms,
                       parameter_groups,
                       per_query_metrics,
                       read_log,
                       subsample,
                       xquad_answer_offsets,
)
from .figures import distributions_figure, heatmap_figure, score_matrix_figure
from .launch import cross_device_gradients, launch_cross_device
from .probes import BATCHING_MODES, measure_batching, peak_memory, training_step
from .profiles import (
                       PROFILES,
                       ROOT,
                       cpu_model,
                       Run,
                       cpu_threads,
                       data_dir,
                       describe_model,
                       device_name,
                       profile,
                       require_data,
                       run_info,
                       settings,
                       settings_table,
                       show,
                       show_source,
                       smoke,
                       start_run,
)
from .tiny import (
                       ENCODER_SHAPES,
                       TINY_WORDS,
                       make_tiny_model,
                       random_batch,
                       random_encoder_model,
)
