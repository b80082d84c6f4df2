"""Model build pipeline: data -> teacher -> distilled int8 student -> calibration -> manifest -> publish.

This package imports TensorFlow lazily, inside the stages that need it; the runtimes never import it.
"""
