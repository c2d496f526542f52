"""reflex_ros: serve flow-matching VLA policies on ROS 2 robots.

The generated messages (`reflex_ros.msg`) are installed by CMake/rosidl into site-packages
under the same package name. Extending ``__path__`` merges that directory with these
sources, so `from reflex_ros.msg import ActionChunk` works from an editable install and
from a colcon install alike.
"""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
