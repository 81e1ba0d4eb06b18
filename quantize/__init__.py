"""The conversion pipeline: rewrites, export, INT8 and the accuracy check (torch side)."""

from edgedet.vendor_telemetry import quiet_vendor_telemetry

# OpenVINO and NNCF, which the pipeline imports, report usage unless declined first.
quiet_vendor_telemetry()
