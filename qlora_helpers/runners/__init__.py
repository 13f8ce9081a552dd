"""The command-line runners: the series without a notebook server.

`python -m qlora_helpers.runners.run --profile NAME` executes the four notebooks with papermill
(runner, with the named parameter sets in profiles); `accelerate launch -m
qlora_helpers.runners.train_all_gpus` runs one notebook's steps on every GPU; `python -m
qlora_helpers.runners.kaggle push` puts the series on your Kaggle account (the wheel dataset, the kernels).
"""
