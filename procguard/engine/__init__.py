"""The engine: state machines, the supervisor's registry and commands, deploys."""
