import sys

from alignseg_keras.cli import program

sys.exit(program())
