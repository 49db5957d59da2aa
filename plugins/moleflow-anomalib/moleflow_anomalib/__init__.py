"""moleflow-anomalib: anomalib's own torch models (PatchCore, PaDiM, FastFlow, DFM) as moleflow models.

Each runs inside moleflow's task streams, router, metrics, run folders, report and sweeps, with its
backbone's ImageNet weights from moleflow's offline sources (`moleflow.weights`): anomalib's networks,
memory banks, coreset sampler, losses, anomaly maps and image scores are used as anomalib defines them;
moleflow adds the continual protocol (one model per task under `--strategy moleflow`, one model trained task
after task under `finetune`, one on every task's data under `joint`).
"""
