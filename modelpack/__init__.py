"""The model artifact contract shared by both runtimes: manifest, tokenizer, LiteRT model, classifier.

Needs only numpy, tokenizers and ai-edge-litert: no TensorFlow, no torch, no model_build.
"""
