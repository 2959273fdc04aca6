import sys

from perfkit.cli import main

# Guarded: a child process that multiprocessing spawns (perfkit.sweep.child) imports this module again
# under another name, and must not run the command line a second time.
if __name__ == "__main__":
    sys.exit(main())
