"""The OS seam and its real side: timers, signals, the reaper, spawning, /proc."""
