"""A TF1 graph: placeholders, get_variable, a ConfigProto and a Session (compat.v1 imported as tf)."""
import numpy as np
import tensorflow.compat.v1 as tf

tf.disable_v2_behavior()
tf.set_random_seed(4)

x = tf.placeholder(tf.float32, [None, 10], name="x")
y = tf.placeholder(tf.int64, [None], name="y")
w = tf.get_variable("w", [10, 3])
b = tf.get_variable("b", [3], initializer=tf.zeros_initializer())
logits = tf.matmul(x, w) + b
loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
train_op = tf.train.GradientDescentOptimizer(0.5).minimize(loss)

config = tf.ConfigProto(allow_soft_placement=True)
config.gpu_options.allow_growth = True

rng = np.random.default_rng(4)
data = rng.standard_normal((96, 10)).astype(np.float32)
target = rng.integers(0, 3, size=96)

with tf.Session(config=config) as sess:
    sess.run(tf.global_variables_initializer())
    for epoch in range(3):
        for i in range(0, 96, 32):
            _, value = sess.run([train_op, loss], feed_dict={x: data[i:i + 32], y: target[i:i + 32]})
    print("final loss:", value)
