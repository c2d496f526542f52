"""reflex_ros: pip/editable install of the Python package (messages are built by CMake)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "reflex_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["engine/assets/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/embodiments", glob("config/embodiments/*.yaml")),
        # the executable launch files name (ros2 launch looks in lib/<package>)
        (f"lib/{PACKAGE}", ["scripts/policy_node"]),
    ],
    python_requires=">=3.10",
    install_requires=["numpy", "PyYAML"],
    zip_safe=False,
    maintainer="reflex_ros developers",
    description="ROS 2 lifecycle node serving flow-matching VLA policies as stamped action chunks.",
    license="Apache-2.0",
    entry_points={"console_scripts": ["reflex-ros = reflex_ros.cli:main"]},
)
