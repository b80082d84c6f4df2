"""The teacher room: the cloud model. The pretrained MiniLM as files (`minilm`), its Keras port
(`encoder_layers`, assembled by `encoder`), fine-tuned with a classification head on cached lower-layer
states (`finetune`), and the precision it ships at, fp32 or dynamic-range int8 (`cloud_precision`, a cached
stage). `finetune` and `encoder` import Keras; the rest do not."""
