"""Your own pictures: a dataset of a few dozen annotated pictures, built from what an
annotation tool exported (`python -m tfds_crowd.build folder`), usually fine-tuned from
a trained run:

    python -m tfds_crowd.build folder --manual_dir my_pictures --name my_pictures
    python launch.py --config configs/folder.py --config.data.name=my_pictures \\
        --config.init_from=runs/shha --workdir runs/my_pictures

With `init_from`, the model is the source run's (its config.json's model fields); without
it, the paper's model trains from ImageNet weights. The best checkpoint on the `val`
split is the run's result and is tested once on `test` (the folder importer makes both
unless told otherwise: docs/datasets.md). The recipe below (a short run at the source
run's learning rate decayed to zero, frequent evaluations) follows
benchmarks/finetune_study.py (docs/real_data_study.md).
"""

import ml_collections

from configs import base


def get_config():
  config = base.get_config()
  config.data.name = ""  # --config.data.name=NAME, the --name the dataset was built with
  config.data.eval_split = "val"
  config.data.validation = True
  config.data.test_split = "test"
  config.data.max_side = 1024  # phone and camera pictures: heads at the datasets' scale
  # None: with init_from, the rate the source run trained with (benchmarks/
  # finetune_study.py: a tenth of it diverged); without, set --config.learning_rate.
  config.learning_rate = ml_collections.FieldReference(None, field_type=float)
  config.lr_schedule = "cosine"  # decayed to zero over the short run
  config.num_train_steps = 500
  config.log_every_steps = 25
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  return config
