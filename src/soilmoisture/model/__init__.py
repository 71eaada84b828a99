"""The network (thesis Table 3) and the engines that train it."""
