import sys

from dlzoo.demo.app import main

sys.exit(main())
