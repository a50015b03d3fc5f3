import pytest

from imgq.layers import UnknownLayer, check_layers, dump_bytes, layer_shapes


def test_the_vendored_table_is_keras_resnet50():
    from keras.applications import resnet50

    model = resnet50.ResNet50(weights=None)
    assert layer_shapes() == {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}


def test_names_come_back_once_in_model_order():
    assert check_layers(["avg_pool", "conv1_relu", "avg_pool"]) == ("conv1_relu", "avg_pool")


@pytest.mark.parametrize(("name", "hint"), [("conv3_block4_outt", "conv3_block4_out"), ("avgpool", "avg_pool"),
                                            ("zzz", "See `imgq layers`")])
def test_unknown_names_suggest_the_closest(name, hint):
    with pytest.raises(UnknownLayer, match=f"no layer '{name}'") as info:
        check_layers(["conv1_relu", name])
    assert hint in str(info.value)


def test_dump_bytes():
    assert dump_bytes(("avg_pool",), "float16") == 2048 * 2
    assert dump_bytes(("conv1_relu", "avg_pool"), "float32") == (112 * 112 * 64 + 2048) * 4
