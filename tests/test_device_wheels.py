"""The wheel list for an offline GPU host: what its package list already holds is left out."""

from benchmarks import device_wheels


def test_host_package_lists_are_read_by_canonical_name(tmp_path):
  listing = tmp_path / "host.txt"
  listing.write_text(
      "# pip list --format=freeze\nJAX==0.11.2\nml_collections==1.1.0\n"
      "orbax-checkpoint @ file:///wheels/orbax.whl\ntyping.extensions>=4\n\nnumpy\n"
  )
  assert device_wheels.read_present(listing) == {
      "jax",
      "ml-collections",
      "orbax-checkpoint",
      "typing-extensions",
      "numpy",
  }
  assert device_wheels.canonical("Tensorflow_Datasets") == "tensorflow-datasets"


def test_the_lent_gpu_image_lacks_exactly_the_data_stack():
  """The committed list of the lent H100/H200 image has the ML stack but not the data
  stack, which is what device_check.sh installs from .whl."""
  present = device_wheels.read_present(device_wheels.ROOT / "benchmarks" / "gpu_host_packages.txt")
  assert {"jax", "flax", "optax", "orbax-checkpoint", "torch", "pytest-xdist"} <= present
  assert not {"ml-collections", "grain", "tensorflow-datasets", "tensorboardx"} & present
