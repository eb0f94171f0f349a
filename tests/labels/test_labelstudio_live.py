"""Against a running Label Studio 1.23 (started by the ``label_studio`` fixture): push, annotate, pull, and
avminer as the project's ML backend.

The round trip runs the README's commands (``avminer label push`` / ``pull``) with ``AVMINER_*``
variables, annotates through Label Studio's REST API as a person would (accept the pre-annotation,
later repaint one), and checks the catalog, the stored masks and the trainer's pending-label count.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avminer.catalog.catalog import Catalog, open_catalog
from avminer.cli.main import main
from avminer.config import load_settings
from avminer.images import decode_image
from avminer.labels.consumer import LabelApplier
from avminer.labels.deliver import deliver
from avminer.labels.labelstudio import ImageUrls, label_config, mask_from_results, prediction_results
from avminer.labels.labelstudio_api import (
    LabelStudioClient,
    UserEmails,
    ensure_local_storage,
    ensure_project,
    push_samples,
)
from avminer.labels.masks import CLASS_NAMES, decode_mask_png
from avminer.labels.ml_backend import EnsemblePredictor, FrameFetcher, MLBackend, MLBackendServer
from avminer.sinks.base import MinedSample, MinedSampleWriter
from avminer.sinks.local import LocalDecisionSink, LocalRequestSink
from avminer.storage.local import LocalFrameStore
from avminer.trainer.service import TrainerService
from tests.label_studio_server import LocalLabelStudio
from tests.services import KafkaBroker, S3Server
from tests.sinks import factories as f

pytestmark = pytest.mark.slow  # the first run installs Label Studio (minutes); each run starts it (seconds)

N = 4


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout_s:.0f}s")
        time.sleep(0.2)


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert lines, "the command printed no JSON summary"
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def _mine(out: Path, catalog: Catalog, samples: list[MinedSample]) -> LocalFrameStore:
    store = LocalFrameStore(out)
    writer = MinedSampleWriter(store, LocalRequestSink(out), LocalDecisionSink(out), catalog)
    writer.write_batch(samples)
    writer.close()
    return store


@pytest.fixture
def live_env(label_studio: LocalLabelStudio, monkeypatch: pytest.MonkeyPatch, unique: str) -> Iterator[Path]:
    """An output directory Label Studio can serve, and the AVMINER_* variables that point avminer at it."""
    assert label_studio.files_root is not None
    out = label_studio.files_root / f"out-{unique}"
    out.mkdir()
    for name, value in {
        "LABELSTUDIO__URL": label_studio.url, "LABELSTUDIO__TOKEN": label_studio.token,
        "LABELSTUDIO__PROJECT": f"avminer-{unique}", "LABELSTUDIO__LOCAL_FILES_ROOT": str(label_studio.files_root),
        "SINKS__OUTPUT_DIR": str(out), "SINKS__CATALOG_URL": f"sqlite:///{out / 'catalog.db'}",
        "TRAINER__WORK_DIR": str(out / "train"), "TRAINER__RETRAIN_EVERY_LABELS": str(N),
        "METRICS__PORT": "0",
    }.items():
        monkeypatch.setenv(f"AVMINER_{name}", value)
    monkeypatch.delenv("AVMINER_CONFIG", raising=False)
    yield out


def test_push_annotate_pull_round_trip(
    label_studio: LocalLabelStudio, live_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = live_env
    settings = load_settings()
    catalog = open_catalog(str(settings.sinks.catalog_url))
    store = _mine(out, catalog, [f.sample(i) for i in range(N)] + [f.sample(99, mined=False)])
    client = LabelStudioClient(label_studio.url, label_studio.token)  # a personal access token (JWT)

    # 1. Push: one task per mined frame, pre-annotated, scores as sortable data; pushing again changes nothing.
    assert main(["label", "push"]) == 0
    pushed = _json_out(capsys)
    assert pushed["created"] == N and pushed["updated"] == 0
    pid = pushed["project"]
    project = client.get_project(pid)
    assert "".join(project["label_config"].split()) == "".join(label_config().split())
    assert main(["label", "push"]) == 0
    assert _json_out(capsys) == {**pushed, "created": 0, "unchanged": N}
    tasks = {t["data"]["sample_id"]: t for t in client.tasks(pid)}
    assert sorted(tasks) == [f"s{i:04d}" for i in range(N)]
    for sid, task in tasks.items():
        row = catalog.get_sample(sid)
        assert row is not None and row.frame_uri
        data = task["data"]
        assert (data["score_mi"], data["score_shift"], data["slice"], data["model_version"], data["reasons"]) == (
            row.scores["mi"], row.scores["shift"], row.slice, row.model_version, ",".join(row.reasons))
        # Label Studio itself serves the frame avminer stored (the annotator's browser loads this URL).
        assert client.request("GET", data["image"], raw=True) == store.get(row.frame_uri)
        (pred,) = client.predictions(task["id"])
        painted = mask_from_results(pred["result"])
        assert painted is not None and np.array_equal(painted, f.class_mask(int(sid[1:])))
        assert pred["model_version"] == row.model_version and pred["score"] == pytest.approx(row.priority)

    # A replayed frame (mined again by a newer model) finds its task: no duplicate; the catalog keeps the
    # first decision, so the task stays as it is.
    _mine(out, catalog, [f.sample(0, model="v2")])
    assert main(["label", "push"]) == 0
    assert _json_out(capsys) == {**pushed, "created": 0, "unchanged": N}
    # A task edited or stripped of its pre-annotation in Label Studio is put back by the next push.
    first = tasks["s0000"]
    client.update_task(first["id"], {**first["data"], "score_mi": -1.0})
    client.request("DELETE", f"/api/predictions/{client.predictions(tasks['s0001']['id'])[0]['id']}/")
    assert main(["label", "push"]) == 0
    again = _json_out(capsys)
    assert (again["created"], again["updated"], again["unchanged"], again["predictions_added"]) == (0, 1, N - 1, 1)
    tasks = {t["data"]["sample_id"]: t for t in client.tasks(pid)}
    assert len(tasks) == N and tasks["s0000"]["data"]["score_mi"] == first["data"]["score_mi"]
    assert len(client.predictions(tasks["s0001"]["id"])) == 1

    # 2. People annotate: each accepts the pre-annotation as it is (what "submit" on an untouched
    #    prediction sends); one is cancelled first, which must not count.
    annotations = {}
    for sid, task in tasks.items():
        (pred,) = client.predictions(task["id"])
        if sid == "s0002":
            client.create_annotation(task["id"], [], was_cancelled=True)
        annotations[sid] = client.create_annotation(task["id"], pred["result"], parent_prediction=pred["id"],
                                                    lead_time=4.5)

    # 3. Pull: every sample labeled, by whom and with which annotation, the mask exactly the accepted one.
    assert main(["label", "pull"]) == 0
    assert _json_out(capsys) == {"project": pid, "new": N, "already_applied": 0, "published": 0, "applied": N,
                                 "refused": 0, "problems": 0}
    for sid, ann in annotations.items():
        row = catalog.get_sample(sid)
        assert row is not None and row.state == "labeled" and row.label_uri
        assert row.labeler == f"labelstudio:{label_studio.username}#annotation-{ann['id']}"
        assert np.array_equal(decode_mask_png(store.get(row.label_uri)), f.class_mask(int(sid[1:])))

    # 4. A reviewer corrects one mask (a car painted over the top rows): pulling again applies only that.
    corrected = f.class_mask(1).copy()
    car = CLASS_NAMES.index("car")
    corrected[:8, 12:40] = car
    client.update_annotation(annotations["s0001"]["id"], result=prediction_results(corrected))
    assert main(["label", "pull"]) == 0
    summary = _json_out(capsys)
    assert (summary["new"], summary["already_applied"], summary["applied"]) == (1, N - 1, 1)
    row = catalog.get_sample("s0001")
    assert row is not None and np.array_equal(decode_mask_png(store.get(str(row.label_uri))), corrected)

    # 5. The catalog shows them labeled, and the trainer counts them as pending (and is due: N labels).
    assert {r.sample_id for r in catalog.query_samples(states=["labeled"])} == set(tasks)
    trainer = TrainerService(load_settings(), catalog=catalog, threads=1)
    assert trainer.pending_labels() == N and trainer.due()
    catalog.close()


def _jpeg_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.width, img.height


def test_label_studio_asks_avminer_for_predictions_and_sends_annotation_events(
    label_studio: LocalLabelStudio, live_env: Path, sample_drive: Path
) -> None:
    from avminer.mining.daemon import open_engines
    from avminer.mining.pipeline import default_scorer_factory
    from tests.mining.support import sample_records

    out = live_env
    settings = load_settings(overrides={"engine": {"threads": 1}})
    catalog = open_catalog(str(settings.sinks.catalog_url))
    frames = sample_records(sample_drive)[0][:3]
    # Mined frames without a stored prediction: the project has to ask the backend for one.
    mined = [MinedSample(decision=f.decision(i), image=fr.image, content_type="image/jpeg", uncertainty_png=None,
                         prediction_png=None, width=fr.width, height=fr.height, priority=1.0)
             for i, fr in enumerate(frames[:2])]
    store = _mine(out, catalog, mined)
    client = LabelStudioClient(label_studio.url, label_studio.token)
    pid = ensure_project(client, settings.labelstudio.project)
    ensure_local_storage(client, pid, out)
    urls = ImageUrls(local_files_root=label_studio.files_root)
    push_samples(client, pid, catalog.query_samples(), store.get, urls)
    # Any task, not only avminer's: a frame Label Studio serves, with no sample id.
    extra = out / "other" / "frame.jpg"
    extra.parent.mkdir()
    extra.write_bytes(frames[2].image or b"")
    client.import_tasks(pid, [{"data": {"image": urls(extra.as_uri())}}])

    holder = open_engines(settings)
    predictor = EnsemblePredictor(holder, default_scorer_factory(settings))
    applier = LabelApplier(catalog, store)
    backend = MLBackend(predictor, FrameFetcher(catalog, store.get, client),
                        on_results=lambda results: deliver(settings, results, applier), emails=UserEmails(client))
    server = MLBackendServer(backend)
    server.start()
    try:
        # Connecting: Label Studio checks /health and calls /setup with the project's labeling config.
        ml = client.add_ml_backend(pid, server.url)
        state = client.request("GET", f"/api/ml/{ml['id']}")
        assert state["state"] == "CO", state  # connected
        assert state["model_version"] == holder.version

        # Label Studio asks for predictions on every task (the Data Manager's "Retrieve predictions").
        client.request("POST", "/api/dm/actions", {"selectedItems": {"all": True, "excluded": []}},
                       params={"id": "retrieve_tasks_predictions", "project": pid})
        tasks = list(client.tasks(pid))
        assert len(tasks) == 3
        for task in tasks:
            preds = [p for p in client.predictions(task["id"]) if p["model_version"] == holder.version]
            assert len(preds) == 1, (task["data"], client.predictions(task["id"]))
            mask = mask_from_results(preds[0]["result"])
            sid = task["data"].get("sample_id")
            frame = store.get(catalog.get_sample(sid).frame_uri) if sid else extra.read_bytes()  # type: ignore[union-attr]
            width, height = _jpeg_size(frame)
            assert mask is not None and mask.shape == (height, width)
            # The score is the ensemble's mutual information for this frame, as the miner computes it.
            direct = predictor.predict([decode_image(frame)])[0]
            assert preds[0]["score"] == pytest.approx(direct.scores["mi"], rel=1e-4)
            assert np.array_equal(mask, direct.mask)

        # An annotator accepts the backend's prediction: the webhook event becomes a label in the catalog.
        task = next(t for t in tasks if t["data"].get("sample_id") == "s0000")
        pred = next(p for p in client.predictions(task["id"]) if p["model_version"] == holder.version)
        ann = client.create_annotation(task["id"], pred["result"], parent_prediction=pred["id"])

        def labeled() -> bool:
            row = catalog.get_sample("s0000")
            return row is not None and row.state == "labeled"

        _wait(labeled, 60, "the ANNOTATION_CREATED webhook labeling s0000")
        row = catalog.get_sample("s0000")
        assert row is not None and row.labeler == f"labelstudio:{label_studio.username}#annotation-{ann['id']}"
        assert np.array_equal(decode_mask_png(store.get(str(row.label_uri))), mask_from_results(pred["result"]))
        assert backend.webhooks.results >= 1
        assert TrainerService(load_settings(), catalog=catalog, threads=1).pending_labels() == 1
    finally:
        server.shutdown()
        server.server_close()
        holder.close()
        catalog.close()


def test_pull_with_a_broker_goes_through_the_label_consumer_and_its_dead_letters(
    label_studio: LocalLabelStudio, live_env: Path, kafka: KafkaBroker, unique: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """With a broker, pulled annotations are LabelResults on the results topic: the label consumer applies
    a good one and dead-letters one whose mask does not fit its frame, exactly like any other label."""
    from kafka import KafkaConsumer, TopicPartition

    from avminer.events import codec
    from avminer.events.records import LabelResult
    from avminer.labels.consumer import LabelResultConsumer

    out = live_env
    topics = {name: kafka.topic(name) for name in ("results", "dlq")}
    monkeypatch.setenv("AVMINER_KAFKA__BOOTSTRAP_SERVERS", kafka.bootstrap)
    monkeypatch.setenv("AVMINER_TOPICS__LABEL_RESULTS", topics["results"])
    monkeypatch.setenv("AVMINER_TOPICS__DEAD_LETTER", topics["dlq"])
    settings = load_settings()
    catalog = open_catalog(str(settings.sinks.catalog_url))
    store = _mine(out, catalog, [f.sample(i) for i in range(2)])
    client = LabelStudioClient(label_studio.url, label_studio.token)
    assert main(["label", "push"]) == 0
    pid = _json_out(capsys)["project"]
    tasks = {t["data"]["sample_id"]: t for t in client.tasks(pid)}
    (pred,) = client.predictions(tasks["s0000"]["id"])
    good = client.create_annotation(tasks["s0000"]["id"], pred["result"], parent_prediction=pred["id"])
    # Painted on a half-size canvas: Label Studio stores it, avminer must refuse it.
    half = f.class_mask(1, width=f.W // 2, height=f.H // 2)
    bad = client.create_annotation(tasks["s0001"]["id"], prediction_results(half))

    assert main(["label", "pull"]) == 0
    assert _json_out(capsys) == {"project": pid, "new": 2, "already_applied": 0, "published": 2, "applied": 0,
                                 "refused": 0, "problems": 0}
    consumer = LabelResultConsumer(settings, LabelApplier(catalog, store), group_id=f"labels-{unique}",
                                   consumer_overrides={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000})
    try:
        stats = consumer.run(max_messages=2, idle_timeout_s=30)
    finally:
        consumer.close()
    assert (stats.ok, stats.invalid, stats.reasons) == (1, 1, {"mask_size_mismatch": 1})
    row = catalog.get_sample("s0000")
    assert row is not None and row.state == "labeled"
    assert row.labeler == f"labelstudio:{label_studio.username}#annotation-{good['id']}"
    refused = catalog.get_sample("s0001")
    assert refused is not None and refused.state == "requested" and refused.label_uri is None

    dlq = KafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topics["dlq"], 0)
    dlq.assign([tp])
    dlq.seek_to_beginning(tp)
    letters: list[Any] = []
    deadline = time.monotonic() + 30
    while not letters and time.monotonic() < deadline:
        for msgs in dlq.poll(timeout_ms=1000).values():
            letters.extend(msgs)
    dlq.close()
    assert len(letters) == 1 and dict(letters[0].headers)["reason"] == b"mask_size_mismatch"
    dead = codec.decode_as(letters[0].value, LabelResult)
    assert dead.sample_id == "s0001" and dead.labeler.endswith(f"#annotation-{bad['id']}")
    catalog.close()


def test_readme_commands_connect_a_miner_to_label_studio(
    label_studio: LocalLabelStudio, live_env: Path, sample_drive: Path, unique: str
) -> None:
    """``avminer mine`` then the README's three commands as processes: push, ml-backend --connect, pull;
    the backend with a password, so Label Studio's calls and webhook events must carry it."""
    import urllib.error
    import urllib.request

    from tests.integration.support import avminer, finish, kill, product_env
    from tests.services import free_port

    out = live_env
    port = free_port()
    env = product_env(**{k: v for k, v in __import__("os").environ.items() if k.startswith("AVMINER_")},
                      AVMINER_SELECTION__TARGET_RATE="0.2", AVMINER_SELECTION__WARMUP_FRAMES="8",
                      AVMINER_SELECTION__CAMERA_COOLDOWN_S="0", AVMINER_SELECTION__DUPLICATE_SIMILARITY="0.999",
                      AVMINER_ENGINE__THREADS="1", AVMINER_LABELSTUDIO__ML_BACKEND_PORT=str(port),
                      AVMINER_LABELSTUDIO__ML_BACKEND_SECRET=f"pw-{unique}")
    logs = {name: out / f"{name}.log" for name in ("mine", "push", "ml", "pull")}
    mined = json.loads(finish(avminer(["mine", "--json", "--drive-log", str(sample_drive)], env, logs["mine"]),
                              logs["mine"], 300).strip().splitlines()[-1])["mined"]
    assert mined >= 3
    pushed = json.loads(finish(avminer(["label", "push"], env, logs["push"]), logs["push"], 120).splitlines()[-1])
    assert pushed["created"] == mined
    pid = pushed["project"]
    client = LabelStudioClient(label_studio.url, label_studio.token)

    ml = avminer(["label", "ml-backend", "--connect"], env, logs["ml"])
    try:
        def connected() -> bool:
            assert ml.poll() is None, logs["ml"].read_text()[-3000:]
            return any(b.get("state") == "CO" for b in client.ml_backends(pid))

        _wait(connected, 120, "the ML backend connected to the project")
        (backend,) = client.ml_backends(pid)
        assert backend["url"] == f"http://127.0.0.1:{port}" and backend["model_version"] == "starter-1"
        assert backend["auth_method"] == "BASIC_AUTH"  # the backend refuses requests without its password
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10)
        assert refused.value.code == 401
        # Label Studio's own "send test request": it posts a task to /predict and shows the answer.
        tested = client.request("POST", f"/api/ml/{backend['id']}/predict/test", params={"random": "true"})
        assert tested["status"] == 200, tested.get("error_message")
        (answer,) = tested["response"]
        assert answer["model_version"] == "starter-1" and answer["score"] > 0
        assert mask_from_results(answer["result"]) is not None

        # A person accepts the miner's pre-annotation; the backend's webhook labels the catalog at once.
        task = next(iter(client.tasks(pid)))
        (pred,) = client.predictions(task["id"])
        ann = client.create_annotation(task["id"], pred["result"], parent_prediction=pred["id"])
        catalog = open_catalog(f"sqlite:///{out / 'catalog.db'}")
        try:
            sid = task["data"]["sample_id"]

            def labeled() -> bool:
                row = catalog.get_sample(sid)
                return row is not None and row.state == "labeled"

            _wait(labeled, 60, "the annotation event labeling the sample")
            row = catalog.get_sample(sid)
            assert row is not None and row.labeler == f"labelstudio:{label_studio.username}#annotation-{ann['id']}"
        finally:
            catalog.close()
        # Polling finds the same annotation already applied: nothing is labeled twice.
        pulled = json.loads(finish(avminer(["label", "pull"], env, logs["pull"]), logs["pull"], 120).splitlines()[-1])
        assert (pulled["new"], pulled["already_applied"], pulled["refused"]) == (0, 1, 0)
        finish(ml, logs["ml"], 60, __import__("signal").SIGTERM)
    finally:
        kill(ml)


def test_push_from_s3_gives_presigned_frame_urls(
    label_studio: LocalLabelStudio, live_env: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Frames in S3 reach the annotator as presigned URLs: Label Studio needs no access to the bucket."""
    import urllib.request

    from avminer.storage.s3 import S3FrameStore

    bucket = s3.bucket("frames")
    for name, value in {"ENDPOINT_URL": s3.endpoint_url, "BUCKET": bucket, "ACCESS_KEY_ID": "any",
                        "SECRET_ACCESS_KEY": "any"}.items():
        monkeypatch.setenv(f"AVMINER_SINKS__S3__{name}", value)
    settings = load_settings()
    catalog = open_catalog(str(settings.sinks.catalog_url))
    store = S3FrameStore.from_settings(settings.sinks.s3)
    writer = MinedSampleWriter(store, LocalRequestSink(live_env), LocalDecisionSink(live_env), catalog)
    writer.write_batch([f.sample(i) for i in range(2)])
    writer.close()
    assert main(["label", "push"]) == 0
    pushed = _json_out(capsys)
    assert pushed["created"] == 2
    client = LabelStudioClient(label_studio.url, label_studio.token)
    for task in client.tasks(pushed["project"]):
        url = task["data"]["image"]
        row = catalog.get_sample(task["data"]["sample_id"])
        assert row is not None and str(row.frame_uri).startswith(f"s3://{bucket}/")
        assert url.startswith(s3.endpoint_url) and "Signature" in url  # what the annotator's browser opens
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.read() == store.get(str(row.frame_uri))
    # A second push refreshes the (expiring) URLs of the same tasks instead of creating new ones.
    assert main(["label", "push"]) == 0
    again = _json_out(capsys)
    assert (again["created"], again["updated"] + again["unchanged"]) == (0, 2)
    catalog.close()
