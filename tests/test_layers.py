import pytest

from imgq.models.layers import UnknownLayer, check_layers, dump_bytes, layer_shapes, shapes_known
from imgq.models.spec import BUILTIN


@pytest.mark.parametrize("name", [n if n == "resnet50" else pytest.param(n, marks=pytest.mark.slow) for n in BUILTIN])
def test_the_vendored_tables_are_keras_own(name):
    """Each table is what keras.applications builds in a fresh session (auto-named layers included), and
    each model's feature layer is the pooled vector just before its classifier."""
    import keras

    keras.backend.clear_session()
    shape = {"input_shape": (*BUILTIN[name].input_size, 3)} if name == "mobilenetv3large" else {}
    model = getattr(keras.applications, BUILTIN[name].constructor)(weights=None, **shape)
    shapes = layer_shapes(name)
    assert shapes == {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}
    assert [n for n in shapes[BUILTIN[name].feature_layer] if n != 1] == [model.layers[-2].output.shape[-1]] or (
        name == "mobilenetv3large" and shapes[BUILTIN[name].feature_layer] == (1, 1, 1280))
    assert tuple(model.input_shape[1:3]) == BUILTIN[name].input_size


def test_names_come_back_once_in_model_order():
    assert check_layers(["avg_pool", "conv1_relu", "avg_pool"]) == ("conv1_relu", "avg_pool")
    assert check_layers(["avg_pool", "post_relu"], "resnet50v2") == ("post_relu", "avg_pool")


@pytest.mark.parametrize(("name", "hint"), [("conv3_block4_outt", "conv3_block4_out"), ("avgpool", "avg_pool"),
                                            ("zzz", "See `imgq layers`")])
def test_unknown_names_suggest_the_closest(name, hint):
    with pytest.raises(UnknownLayer, match=f"no layer '{name}'") as info:
        check_layers(["conv1_relu", name])
    assert hint in str(info.value)


def test_another_models_layers():
    with pytest.raises(UnknownLayer, match="EfficientNetV2B0 has no layer 'conv1_relu'.*--model efficientnetv2b0"):
        check_layers(["conv1_relu"], "efficientnetv2b0")


def test_a_folder_models_layers_are_left_to_its_worker():
    assert not shapes_known("my-model") and layer_shapes("my-model") == {}
    assert check_layers(["dense", "conv", "dense"], "my-model") == ("dense", "conv")
    assert dump_bytes(("dense",), "float32", "my-model") == 0


def test_dump_bytes():
    assert dump_bytes(("avg_pool",), "float16") == 2048 * 2
    assert dump_bytes(("conv1_relu", "avg_pool"), "float32") == (112 * 112 * 64 + 2048) * 4
    assert dump_bytes(("avg_pool",), "float32", "efficientnetv2b0") == 1280 * 4
