from alignseg_keras.models.alignseg import AlignSeg
