"""``facezoo train``: every bad recipe or input stops before training with one line naming the key or file, exit 2."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from facezoo.cli import main

TINY = [
    "model.name=iresnet18_gwp",
    "model.embed_dim=32",
    "model.args={widths: [8, 8, 16, 16], img_size: 32}",
    "data.synthetic.identities=12",
    "data.synthetic.images_per_identity=4",
    "data.batch_size=16",
    "data.num_workers=0",
    "train.max_steps=2",
    "train.tensorboard=false",
    "export.enabled=false",
]


@pytest.fixture()
def recipe(tmp_path: Path) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text("model:\n  name: iresnet18_gwp\noptim:\n  lr: 0.05\n")
    return p


def _fails(capsys, argv, *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("facezoo train: error: ") and "Traceback" not in line
    for n in needles:
        assert n in line, line
    return line


def test_config_errors_name_the_key(recipe, tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "o")]
    _fails(capsys, ["train", str(recipe), *out, *TINY, "optim.lr_rate=0.1"], "optim.lr_rate", "did you mean 'optim.lr'")
    _fails(capsys, ["train", str(recipe), *out, *TINY, "optim.lr=fast"], "optim.lr must be a number", "'fast'")
    _fails(capsys, ["train", str(recipe), *out, *TINY, "train.epochs=2.5"], "train.epochs must be an integer")
    _fails(
        capsys,
        ["train", str(recipe), *out, *TINY, "loss.name=arcfce"],
        "loss.name must be one of",
        "did you mean 'arcface'",
    )
    _fails(
        capsys, ["train", str(recipe), *out, *TINY, "optim.name=adam"], "optim.name must be one of", "'sgd' or 'adamw'"
    )
    _fails(capsys, ["train", str(recipe), *out, *TINY, "loss.args={hh: 1}"], "loss.args.hh is not an argument")
    _fails(capsys, ["train", str(recipe), *out, *TINY, "modle.name=x"], "unknown key 'modle'", "did you mean 'model'")
    _fails(capsys, ["train", str(recipe), *out, *TINY, "lr"], "'lr' is not a key=value override")
    _fails(capsys, ["train", str(tmp_path / "nope.yaml"), *out], "nope.yaml: no such recipe file")
    _fails(capsys, ["train", str(tmp_path / "r.yml"), *out], "r.yml: no such recipe file", f"did you mean '{recipe}'?")
    _fails(capsys, ["train", "quickstart", *out], "quickstart: no such recipe file", "e.g. recipes/quickstart.yaml")
    assert main(["train"]) == 2
    assert "required: recipe (see" in capsys.readouterr().err  # key=value overrides are optional
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: [unclosed\n")
    _fails(capsys, ["train", str(bad), *out], "bad.yaml:", "not valid YAML")


def test_input_errors_stop_before_training(recipe, tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "o")]
    _fails(capsys, ["train", str(recipe), *out, *TINY, "data.train=faces_emore"], "data.train: faces_emore: no such")
    _fails(capsys, ["train", str(recipe), *out, *TINY, "eval.targets=[lfw.bin]"], "eval.targets: lfw.bin: no such")
    _fails(
        capsys,
        ["train", str(recipe), *out, *TINY, "data.batch_size=15", "train.grad_accum=2"],
        "data.batch_size 15 cannot be split",
        "train.grad_accum",
    )
    _fails(capsys, ["train", str(recipe), *out, *TINY, "data.batch_size=64"], "larger than the training set (48")
    _fails(capsys, ["train", str(recipe), *out, *TINY, "data.num_classes=5"], "num_classes=5 is below")
    _fails(
        capsys,
        ["train", str(recipe), *out, *TINY, "model.name=iresnet51_gwp"],
        "unknown model 'iresnet51_gwp'",
        "iresnet50_gwp",
    )
    _fails(capsys, ["train", str(recipe), *out, *TINY, "model.freeze=[layer9]"], "model.freeze: no module 'layer9'")
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_labels_above_num_classes_name_the_data(recipe, tmp_path, capsys):
    import torch

    from facezoo.data import encode_image
    from facezoo.data.recordio import write_face_records

    images = (torch.rand(20, 3, 32, 32) * 255).to(torch.uint8)
    write_face_records(
        tmp_path / "rec", [(encode_image(im), i % 5) for i, im in enumerate(images)], insightface_header=False
    )
    (tmp_path / "rec" / "property").write_text("3,32,32\n")  # a property file that undercounts the classes
    _fails(
        capsys,
        ["train", str(recipe), "--output-dir", str(tmp_path / "o"), *TINY, f"data.train={tmp_path / 'rec'}"],
        "labels go up to 4",
        "num_classes is 3",
    )


def test_unreadable_records_follow_data_on_error(recipe, tmp_path, capsys):
    import torch

    from facezoo.data import encode_image
    from facezoo.data.recordio import write_face_records

    images = (torch.rand(16, 3, 32, 32) * 255).to(torch.uint8)
    records = [(encode_image(im), i % 4) for i, im in enumerate(images)]
    records[5] = (b"not an image", 1)  # every step reads all 16 records (batch 16)
    write_face_records(tmp_path / "rec", records, insightface_header=False)
    argv = ["train", str(recipe), "--quiet", *TINY, f"data.train={tmp_path / 'rec'}"]
    _fails(capsys, [*argv, "--output-dir", str(tmp_path / "stop")], "train.rec: record key 5", "cannot decode image")
    run = tmp_path / "skip"
    assert main([*argv, "--output-dir", str(run), "data.on_error=skip"]) == 0
    log = (run / "train.log").read_text()
    assert "skipping unreadable sample 5" in log and "2 skipped so far" in log, log[-2000:]


def test_existing_run_is_never_overwritten_and_other_checkpoints_are_refused(recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--output-dir", str(run), "--quiet", *TINY]) == 0
    capsys.readouterr()
    _fails(capsys, ["train", str(recipe), "--output-dir", str(run), *TINY], "already holds a run", "--resume latest")
    _fails(
        capsys,
        [
            "train",
            str(recipe),
            "--output-dir",
            str(tmp_path / "other"),
            *TINY,
            "model.embed_dim=64",
            "--resume",
            str(run),
        ],
        "embed_dim: checkpoint 32, recipe 64",
        "model.pretrained=",
    )
    _fails(
        capsys,
        ["train", str(recipe), "--output-dir", str(tmp_path / "x"), *TINY, "--resume", str(tmp_path / "missing")],
        "missing: no such checkpoint",
    )
    # a finished run resumed again: nothing to train, the end is redone, exit 0
    assert main(["train", str(recipe), "--output-dir", str(run), "--quiet", *TINY, "--resume", "latest"]) == 0


def test_debug_shows_the_traceback(recipe, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "facezoo",
            "train",
            str(recipe),
            "--output-dir",
            str(tmp_path / "o"),
            *TINY,
            "optim.lr_rate=1",
            "--debug",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_slurm_example_builds_the_launch_command(tmp_path):
    """scripts/slurm_train.sh with fake SLURM tools: the accelerate launch line each node would run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {
        "scontrol": "#!/bin/sh\nprintf 'gpu-a\\ngpu-b\\n'\n",
        "srun": '#!/bin/sh\nshift\nSLURM_NODEID=1 exec "$@"\n',  # run the node's command once, as node 1
        "accelerate": '#!/bin/sh\nfor a in "$@"; do printf \'%s\\n\' "$a"; done\n',
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(stat.S_IRWXU)
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm_train.sh"
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_NODELIST="gpu-[a-b]",
        SLURM_NNODES="2",
        SLURM_JOB_NAME="r50",
    )
    proc = subprocess.run(
        ["bash", str(script), "recipes/paper/arcface.yaml", "model.args={drop_rate: 0.1}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert args[:2] == ["launch", "--multi_gpu"]
    assert args[args.index("--num_processes") + 1] == "16" and args[args.index("--machine_rank") + 1] == "1"
    assert args[args.index("--main_process_ip") + 1] == "gpu-a"
    tail = args[args.index("-m") :]
    assert tail == [
        "-m",
        "facezoo",
        "train",
        "recipes/paper/arcface.yaml",
        "model.args={drop_rate: 0.1}",
        "--output-dir",
        "runs/r50",
        "--resume",
        "latest",
    ]
