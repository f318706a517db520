"""Bridges from sparring's episodes into trainers' own sample types, one module per trainer.

- `sparring.integrations.trl`: a `rollout_func` for TRL's `GRPOTrainer`, and TRL async GRPO's rollout worker;
- `sparring.integrations.verl`: a registered verl agent loop, and gateway sessions as verl's batch;
- `sparring.integrations.slime`: a custom generate function for slime;
- `sparring.integrations.samples`: the one cut from a rollout record to a trainer row that all of them use.

Each module imports its trainer lazily (only the functions that build the trainer's classes do), so
sparring itself never needs a trainer installed. docs/trainers.md says what each returns and what is tested.
"""
