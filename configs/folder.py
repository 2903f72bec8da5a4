"""Your own pictures: a dataset of a few dozen annotated pictures, built from what an
annotation tool exported (`python -m tfds_crowd.build folder`), usually fine-tuned from
a trained run:

    python -m tfds_crowd.build folder --manual_dir my_pictures --name my_pictures
    python launch.py --config configs/folder.py --config.data.name=my_pictures \\
        --config.init_from=runs/shha --workdir runs/my_pictures

With `init_from`, the model is the source run's (its config.json's model fields) and so
is the learning rate; without it, the paper's model trains from ImageNet weights at
configs/base.py's rate (the paper's 1e-5; `finetune.default_learning_rate`). The best
checkpoint on the `val` split is the run's result and is tested once on `test` (the
folder importer makes both unless told otherwise: docs/datasets.md); a dataset built
without `val` (--val_fraction 0, or a split file without it) is evaluated on `test` and
its last checkpoint is the result, as for ShanghaiTech (`pipeline.with_folder_splits`,
logged, and recorded in the run's config.json).

What benchmarks/finetune_study.py (docs/real_data_study.md) measured is the learning
rate: the source run's, decayed to zero (cosine); a tenth of it made every fine-tuned
model worse. The other defaults are not measured by it (it ran 60 steps of 128-pixel
crops without a validation split): they are set for a few dozen pictures, as the
comments below say.
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
  # Not measured: base.py's 256, the paper's crop. A picture smaller than the crop (after
  # max_side) is padded with the mean colour and its image part marked (valid_size), so
  # small pictures train as they are and need no smaller crop.
  config.data.crop_size = 256
  # None: with init_from, the rate the source run trained with (benchmarks/
  # finetune_study.py: a tenth of it made every model worse); without, base.py's.
  config.learning_rate = ml_collections.FieldReference(None, field_type=float)
  config.lr_schedule = "cosine"  # decayed to zero over the short run (as in the study)
  # Not measured: 500 steps of 4 crops are about 50 passes over 40 pictures, minutes on
  # a GPU; evaluating (and checkpointing, so the best on val can be restored) every 100
  # steps costs little on a val split of a few pictures and gives 5 candidates.
  config.num_train_steps = 500
  config.log_every_steps = 25
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  return config
