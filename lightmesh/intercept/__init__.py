"""Traffic interception: the iptables rules the init container installs in a pod's network namespace."""
