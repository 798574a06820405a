"""Training on a GPU with AMP (float16 O1 and a loss scaler). Skipped without a GPU build and a GPU."""
import json

import numpy as np
import paddle
import pytest

import train_fixtures  # noqa: F401  (puts the repository on sys.path)
from train_fixtures import model_folder, read_params, spoken_corpus, tiny_config  # noqa: F401
from utils.training import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not (paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0),
    reason="needs a GPU build of Paddle (make setup PADDLE=paddlepaddle-gpu) and a GPU")]


def test_amp_training_stays_finite_saves_its_scaler_and_resumes(spoken_corpus, tmp_path):
    cfg = tiny_config(spoken_corpus, tmp_path, train__use_amp=True, train__num_epoch=2,
                      data__augment_conf_path=None)
    train(cfg)
    state = json.loads((model_folder(cfg) / "state.json").read_text(encoding="utf-8"))
    assert state["epoch"] == 2 and state["scaler"], state  # the loss scale travels with the checkpoint
    assert all(np.isfinite(v).all() for v in read_params(model_folder(cfg)).values())
    losses = [h["test_loss"] for h in state["history"]]
    assert np.isfinite(losses).all()
    cfg.train.num_epoch = 3  # resumes from last_model with the saved scaler
    train(cfg)
    resumed = json.loads((model_folder(cfg) / "state.json").read_text(encoding="utf-8"))
    assert resumed["epoch"] == 3 and resumed["step"] > state["step"]
