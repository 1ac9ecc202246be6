"""The prepare engine for local corpora: datatrove stages (`stages`) over N tasks, run locally or
on Slurm (`run.run_datatrove`); called by `prepare_text.prepare` (see docs/data.md)."""
