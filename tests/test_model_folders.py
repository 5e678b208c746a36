"""Damaged model folders and checkpoints: each answered in one line naming the file, exit status 2,
before a run folder exists. The folders are copies of the committed toy prior, damaged by the test."""

import shutil
from pathlib import Path

import pytest
import torch

from threedgen import cli
from threedgen.guidance.priors import clear_prior_cache

ROOT = Path(__file__).resolve().parents[1]
PRIOR = ROOT / "assets" / "toy-prior"


def _no_unet(d: Path) -> str:
    shutil.rmtree(d / "unet")
    return f"{d}/unet/config.json"


def _corrupt_weights(d: Path) -> str:
    (f,) = (d / "unet").glob("*.safetensors")
    f.write_bytes(f.read_bytes()[:1000])  # a download cut short
    return str(f)


def _foreign_tokenizer(d: Path) -> str:
    # a tokenizer with 18 more tokens than the text encoder embeds (as the toy video prior's has)
    import json

    tok = json.loads((d / "tokenizer" / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for i in range(18):
        vocab[f"extra{i}</w>"] = len(vocab)
    (d / "tokenizer" / "tokenizer.json").write_text(json.dumps(tok))
    return f"{d}/tokenizer/tokenizer.json"


def _broken_json(d: Path) -> str:
    (d / "text_encoder" / "config.json").write_text('{"vocab_size": 12')
    return f"{d}/text_encoder/config.json"


@pytest.mark.parametrize("damage", [_no_unet, _corrupt_weights, _foreign_tokenizer, _broken_json])
def test_damaged_prior_folder_one_line_naming_the_file(tmp_path, capsys, damage):
    folder = tmp_path / "prior"
    shutil.copytree(PRIOR, folder)
    needle = damage(folder)
    clear_prior_cache()
    out = tmp_path / "out"
    code = cli.main(["--config", str(ROOT / "configs" / "toy" / "sds-nerf.yaml"), "--train", "-q", f"output_dir={out}",
                     f"system.guidance.0.prior.model={folder}", "trainer.max_steps=2", "system.prompt_processor.use_cache=false"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert needle in err[0], err[0]
    assert not out.exists()


def test_truncated_checkpoint_one_line(tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(10_000)}, "global_step": 3}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    code = cli.main(["--config", str(ROOT / "configs" / "toy" / "sds-nerf.yaml"), "--train", "-q", "--resume", str(ckpt),
                     f"output_dir={tmp_path / 'out'}"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and str(ckpt) in err[0] and "truncated" in err[0], err
