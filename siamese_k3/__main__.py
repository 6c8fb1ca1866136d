import sys

from siamese_k3.cli import main

sys.exit(main())
