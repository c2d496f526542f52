"""Applications that drive the library: ``reflex-ros demo`` (demo.py) with its monitor node
(demo_monitor.py) and summary (loop_report.py), and ``reflex-ros calibrate`` from a bag
(calibrate.py). Nothing in the library imports from here."""
