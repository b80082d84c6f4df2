"""The edge inference service: an int8 LiteRT model on the device, calibrated routing to the cloud.

Nothing here does work at import: `python -m edge_container serve` (or `app.create_app`) wires and starts it.
Needs only the edge requirements (edge_container/requirements.txt): never TensorFlow, torch or model_build.
"""
