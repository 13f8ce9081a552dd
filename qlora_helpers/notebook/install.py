"""The notebooks' first cell: install this package on Kaggle or Colab, before it can be imported.

Each notebook's install cell is this file's code below the docstring plus `print(install_qlora_helpers())`;
tests/test_install.py checks that, and `python -m qlora_helpers.runners.kaggle install-cell` writes it
into the notebooks. So this file imports only the standard library, never the package.
"""
# On Kaggle/Colab: install qlora_helpers (the cells below call it) from a wheel in an attached Kaggle dataset
# (the README's `kaggle push` step) or uploaded to /content, else from $QLORA_HELPERS_SOURCE (a pip URL; default: this
# project's repository). Anywhere else `make setup` has installed it and this cell does nothing.
import glob, importlib, os, subprocess, sys, tempfile
from importlib import metadata

VERSION, SOURCE = "0.1.0", "git+https://github.com/qlora-notebooks/qlora-notebooks"
WHEEL_DIRS = ("/kaggle/input/*", "/kaggle/input/*/*/*", "/content")  # both Kaggle dataset layouts; Colab uploads
# The tested versions (constraints.txt) of the libraries the notebooks call, so a run does not change under
# you when they release; torch, numpy and pandas stay the runtime's own.
PINS = ("accelerate==1.16.0", "bitsandbytes==0.50.2", "datasets==5.2.0", "huggingface_hub==2.4.0", "kernels==0.19.1",
        "peft==0.21.2", "pyarrow==25.0.1", "safetensors==0.8.0", "tokenizers==0.23.3", "transformers==5.25.0")


def install_qlora_helpers(version=VERSION, environ=os.environ, wheel_dirs=WHEEL_DIRS):
    if any(dist.version == version for dist in metadata.distributions(name="qlora-helpers")):
        return f"qlora-helpers {version} is installed"
    if not ({"KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG"} & set(environ) or "google.colab" in sys.modules):
        return "not on Kaggle or Colab: `make setup` installs qlora-helpers"
    wheel = f"qlora_helpers-{version}-py3-none-any.whl"
    found = [path for folder in wheel_dirs for path in sorted(glob.glob(f"{folder}/{wheel}"))]
    url = f"file://{found[0]}" if found else environ.get("QLORA_HELPERS_SOURCE") or SOURCE
    # The [qlora] extra adds bitsandbytes; it and any missing dependency come from PyPI (Internet on), at PINS.
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(PINS))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", constraints.name,
                          f"qlora-helpers[qlora] @ {url}"], capture_output=True, text=True)
    if pip.returncode:
        raise RuntimeError(f"pip could not install qlora-helpers {version} from {url}:\n{pip.stderr[-1500:]}\nFix: on "
                           "Kaggle add the dataset the README's `kaggle push` step uploads as an input and turn Internet on; on "
                           f"Colab upload {wheel} to /content; or set QLORA_HELPERS_SOURCE to a pip URL of this package.")
    importlib.invalidate_caches()
    return f"installed qlora-helpers {version} from {url}"
