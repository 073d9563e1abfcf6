"""Pretrained weights into msjax's Flax parameter trees. Every porter is strict: each
tensor present with its shape and nothing left over, or one `mismatch` error naming them.

    hf           Hugging Face wav2vec2 / HuBERT checkpoints -> the SSL encoder
    torchvision  torchvision's ImageNet AlexNet -> AlexNetFeatures (.npz params file)
    lstm         a bidirectional torch.nn.LSTM -> BiLSTM
    pth          PyTorch .pth files read without PyTorch
    download     AlexNet's weights on first use: download, SHA-256 check, port, cache
"""
