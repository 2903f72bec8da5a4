"""Finding the user's pictures on disk."""

import pytest
from PIL import Image

from cfrnet_jax.inference.user_images import collect_images


def test_collect_images_reports_what_it_ignores(tmp_path):
  (tmp_path / "a").mkdir()
  Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.PNG")
  Image.new("RGB", (8, 8)).save(tmp_path / "y.jpg")
  (tmp_path / "notes.txt").write_text("not an image")
  files, ignored = collect_images([str(tmp_path), str(tmp_path / "*.jpg")])
  assert files == [tmp_path / "a" / "x.PNG", tmp_path / "y.jpg"] and ignored == 1
  with pytest.raises(FileNotFoundError, match="nothing-here"):
    collect_images([str(tmp_path / "nothing-here*.jpg")])
