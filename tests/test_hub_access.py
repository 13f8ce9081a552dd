"""A gated (or private) model on the hub: the token comes from a Kaggle secret or $HF_TOKEN (Colab's
secrets huggingface_hub reads itself), and a 401/403 becomes advice that names the page to accept."""
from __future__ import annotations

import sys
from types import ModuleType

import huggingface_hub
import pytest
from huggingface_hub import constants, errors
from huggingface_hub.utils import hf_raise_for_status

from qlora_helpers import modeling
from qlora_helpers.modeling import ModelSetupError

MODEL = "google/gemma-3-270m"
http = sys.modules[errors.Response.__module__.partition(".")[0]]  # the HTTP client huggingface_hub uses


def hub_error(status: int, code: str) -> Exception:
    """What huggingface_hub raises when the hub answers `status` with X-Error-Code `code`."""
    request = http.Request("GET", f"https://huggingface.co/api/models/{MODEL}")
    with pytest.raises(errors.HfHubHTTPError) as raised:
        hf_raise_for_status(http.Response(status, headers={"X-Error-Code": code}, request=request))
    return raised.value


def as_transformers_raises(error: Exception) -> OSError:
    """transformers' cached_files wraps the hub's error in an OSError (`raise OSError(...) from e`)."""
    try:
        raise OSError(f"You are trying to access a gated repo.\nMake sure to have access to it at "
                      f"https://huggingface.co/{MODEL}.") from error
    except OSError as wrapped:
        return wrapped


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """No token anywhere (no $HF_TOKEN, no login file); the tokenizer load raises `hub.error`, and
    records the token the hub client would send; loading the weights fails the test."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.setenv(name, "")  # recorded, so teardown also removes a token the code under test sets
        monkeypatch.delenv(name)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    state = type("Hub", (), {"error": None, "tokens": []})()

    def from_pretrained(model_id, *args, **kwargs):
        state.tokens.append(huggingface_hub.get_token())
        raise state.error

    def weights(*args, **kwargs):
        raise AssertionError("the weights were requested although the tokenizer was refused")

    monkeypatch.setattr(modeling.AutoTokenizer, "from_pretrained", from_pretrained)
    monkeypatch.setattr(modeling.AutoModelForSequenceClassification, "from_pretrained", weights)
    return state


@pytest.fixture
def kaggle_secret(monkeypatch):
    """A Kaggle runtime whose notebook has a secret HF_TOKEN attached (Add-ons > Secrets)."""
    module = ModuleType("kaggle_secrets")

    class UserSecretsClient:
        def get_secret(self, label):
            if label != "HF_TOKEN":
                raise KeyError(label)
            return "hf_from_kaggle_secrets"

    module.UserSecretsClient = UserSecretsClient
    monkeypatch.setitem(sys.modules, "kaggle_secrets", module)


@pytest.mark.parametrize("wrapped", [True, False], ids=["via-transformers", "raw"])
def test_a_gated_model_says_which_page_to_accept_and_where_the_token_goes(hub, wrapped):
    error = hub_error(403, "GatedRepo")
    assert isinstance(error, errors.GatedRepoError)
    hub.error = as_transformers_raises(error) if wrapped else error
    with pytest.raises(ModelSetupError) as raised:
        modeling.load_model(MODEL, "full")
    text = str(raised.value)
    for advice in (f"https://huggingface.co/{MODEL}", "HTTP 403", "gated", "accept its terms", "HF_TOKEN",
                   "Kaggle a secret (Add-ons > Secrets", "Colab a secret", "export HF_TOKEN", "No token was found"):
        assert advice in text
    assert hub.tokens == [None]


def test_a_401_says_the_model_may_be_private_or_misspelled(hub):
    hub.error = hub_error(401, "RepoNotFound")
    assert isinstance(hub.error, errors.RepositoryNotFoundError)
    with pytest.raises(ModelSetupError, match=r"HTTP 401.*private, or the id is misspelled"):
        modeling.load_model(MODEL, "lora")


def test_the_kaggle_secret_becomes_the_hub_token(hub, kaggle_secret, monkeypatch):
    hub.error = as_transformers_raises(hub_error(403, "GatedRepo"))
    with pytest.raises(ModelSetupError, match="A token was found: its account has no access yet"):
        modeling.load_model(MODEL, "full")
    assert hub.tokens == ["hf_from_kaggle_secrets"]  # what the hub client sends with the request


def test_hf_token_in_the_environment_wins_over_the_kaggle_secret(hub, kaggle_secret, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_environment")
    hub.error = hub_error(403, "GatedRepo")
    with pytest.raises(ModelSetupError):
        modeling.load_model(MODEL, "full")
    assert hub.tokens == ["hf_from_environment"]


def test_a_missing_kaggle_secret_leaves_no_token(hub, monkeypatch):
    module = ModuleType("kaggle_secrets")

    class UserSecretsClient:
        def get_secret(self, label):
            raise RuntimeError("no secret HF_TOKEN is attached to this notebook")  # Kaggle's BackendError

    module.UserSecretsClient = UserSecretsClient
    monkeypatch.setitem(sys.modules, "kaggle_secrets", module)
    hub.error = hub_error(403, "GatedRepo")
    with pytest.raises(ModelSetupError, match="No token was found"):
        modeling.load_model(MODEL, "full")
    assert hub.tokens == [None]
