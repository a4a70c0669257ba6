"""Meta-training learned optimizers (pipeline training, Section 5.1).

config.py     MetaConfig: the outer loop's settings, shared by every task plug-in
tasks.py      the plug-in protocol: Task (one task's units and unit loss), Tasks, TaskConfig
pipeline.py   staggered resets, the unit-averaged meta-gradient (split over devices), the
              meta-optimizer
iteration.py  MetaState and one jitted iteration over all tasks
loop.py       meta_train: the host loop (log.csv, validation, orbax checkpoints, resume)
a2c.py        plug-in: A2C on gridworlds (GridworldConfig), with validation
ppo.py        plug-in: PPO on Brax (BraxConfig)
"""
