"""Hypothesis strategies for every event record."""

from __future__ import annotations

from hypothesis import strategies as st

from avminer.events.records import (
    CameraFrame,
    Conditions,
    Decision,
    GpsFix,
    LabelRequest,
    LabelResult,
    ModelRelease,
    RadarDetection,
    RadarScan,
)

text = st.text(max_size=20)
opt_text = st.none() | text
long_ = st.integers(-(2**63), 2**63 - 1)
int_ = st.integers(-(2**31), 2**31 - 1)
double = st.floats(allow_nan=False)
blob = st.binary(max_size=200)

gps = st.builds(GpsFix, lat=double, lon=double, alt_m=double, heading_deg=double, speed_mps=double)
conditions = st.builds(Conditions, time_of_day=opt_text, weather=opt_text, road_type=opt_text, region=opt_text)
camera_frames = st.builds(
    CameraFrame, vehicle_id=text, camera_id=text, timestamp_us=long_, frame_id=text, width=int_, height=int_,
    image=st.none() | blob, image_uri=opt_text, encoding=text, gps=st.none() | gps,
    conditions=st.none() | conditions, metadata=st.dictionaries(text, text, max_size=4),
)
detections = st.builds(RadarDetection, range_m=double, azimuth_rad=double, elevation_rad=double,
                       radial_velocity_mps=double, rcs_dbsm=double)
radar_scans = st.builds(RadarScan, vehicle_id=text, sensor_id=text, timestamp_us=long_,
                        detections=st.lists(detections, max_size=5), simulated=st.booleans())
scores = st.dictionaries(text, double, max_size=4)
label_requests = st.builds(
    LabelRequest, sample_id=text, frame_id=text, frame_uri=text, vehicle_id=text, camera_id=text,
    timestamp_us=long_, slice=text, model_version=text, reasons=st.lists(text, max_size=3), scores=scores,
    priority=double, requested_at_us=long_, uncertainty_uri=opt_text,
)
label_results = st.builds(LabelResult, sample_id=text, labeler=text, labeled_at_us=long_, mask_uri=opt_text,
                          mask_png=st.none() | blob, frame_id=opt_text)
model_releases = st.builds(ModelRelease, version=text, bundle_uri=text, manifest_sha256=text,
                           created_at_us=long_, members=int_, dataset_id=opt_text, gate_report=opt_text, notes=text)
decisions = st.builds(
    Decision, sample_id=text, frame_id=text, vehicle_id=text, camera_id=text, timestamp_us=long_,
    model_version=text, slice=text, mined=st.booleans(), scores=scores, reasons=st.lists(text, max_size=3),
    topic=opt_text, partition=st.none() | int_, offset=st.none() | long_, decided_at_us=long_,
)
records = camera_frames | radar_scans | label_requests | label_results | model_releases | decisions
