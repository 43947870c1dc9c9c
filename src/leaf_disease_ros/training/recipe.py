"""The training recipe's names and defaults, importable without PyTorch (for the CLI's --help)."""

ARCHS = ('resnet18', 'resnet34')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPSET = 17  # ONNX opset of exported models
# fine-tuning an exported model (training/finetune.py): its batch norm is folded into the
# convolutions, so a gentle peak learning rate (one epoch on the demo's harvest: 3e-4 kept
# 0.89 of the PlantVillage validation images right, 1e-4 0.95)
FINETUNE_EPOCHS = 8
FINETUNE_LR = 1e-4
TRAIN_EXTRA_HINT = ('pip install torch==2.14.1 torchvision==0.29.1 && '
                    "pip install 'leaf_disease_ros[train]'")
