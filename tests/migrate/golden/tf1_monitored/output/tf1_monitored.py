"""TF1 training with MonitoredTrainingSession, a global step and a StopAtStepHook."""
import numpy as np
import tensorflow as tf
import opencann.tf as oc
oc.enable(precision_mode="force_fp32")

tf.compat.v1.disable_eager_execution()
tf.compat.v1.set_random_seed(5)

x = tf.compat.v1.placeholder(tf.float32, [None, 4])
y = tf.compat.v1.placeholder(tf.float32, [None, 1])
w1 = tf.compat.v1.get_variable("w1", [4, 8])
w2 = tf.compat.v1.get_variable("w2", [8, 1])
prediction = tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2)
loss = tf.reduce_mean(tf.square(prediction - y))
step = tf.compat.v1.train.get_or_create_global_step()
train_op = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)

rng = np.random.default_rng(5)
data = rng.standard_normal((64, 4)).astype(np.float32)
target = data.sum(axis=1, keepdims=True)

hooks = [tf.compat.v1.train.StopAtStepHook(last_step=20)]
with oc.MonitoredTrainingSession(hooks=hooks) as sess:
    i = 0
    while not sess.should_stop():
        batch = slice(i % 64, i % 64 + 16)
        _, value = sess.run([train_op, loss], feed_dict={x: data[batch], y: target[batch]})
        i += 16
print("final loss:", value)
