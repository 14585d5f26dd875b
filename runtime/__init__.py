"""The deployable engine: reads llmspec artifacts and runs them on ONNX Runtime.

Never imports torch, onnx, jinja2 or transformers.
"""
