import sys

from resnet50.cli import main

sys.exit(main())
