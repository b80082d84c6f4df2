"""The TFLite room: .tflite files made from Keras models (`convert`), read without TensorFlow (`graph`: ops,
tensors, sizes), rewritten to dynamic-range int8 (`dynamic_range`), and run through LiteRT on texts as serving
runs them (`run`). Imports nothing of the build but its errors (and modelpack's LiteRT wrappers)."""
