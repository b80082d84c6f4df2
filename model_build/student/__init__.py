"""The student room: the edge model. The layers every student shares (`layers`: the id remap, the zero-pad
embedding, the masked mean, the vocabulary map), the CNN student (`cnn`) and the transformer one
(`transformer`), the distillation loss (`loss`), training (`distill`), structured pruning (`prune`), and the
teacher-labelled transfer set it learns from (`transfer`). All but `transfer` import Keras: the student stage
imports them when it trains."""
