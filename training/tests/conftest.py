import os
import sys

# The tests import the training code the way train.py does: from training/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
