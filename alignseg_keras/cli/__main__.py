import sys

from alignseg_keras.cli import main

sys.exit(main())
