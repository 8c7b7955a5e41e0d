"""TF 1.x-only APIs: tf.contrib, tf.flags, tf.app and a slim import, all removed in TensorFlow 2."""
import tensorflow as tf
import tensorflow.contrib.slim as slim
import opencann.tf as oc
oc.enable(precision_mode="force_fp32")

flags = tf.flags
flags.DEFINE_integer("steps", 10, "training steps")
FLAGS = flags.FLAGS


def model(images):
    net = slim.conv2d(images, 8, [3, 3])
    net = tf.contrib.layers.flatten(net)
    return tf.layers.dense(net, 10)


def main(_):
    images = tf.placeholder(tf.float32, [None, 28, 28, 1])
    logits = model(images)
    with oc.Session() as sess:
        sess.run(tf.global_variables_initializer())
        print(sess.run(logits, feed_dict={images: [[[[0.0]] * 28] * 28]}).shape)


if __name__ == "__main__":
    tf.app.run(main)
