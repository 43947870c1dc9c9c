"""Geography: geodesy, the time-indexed GPS fix buffer (geotags), and maps of findings."""
