import pytest

from components.checks import ConfigError, at_least, in_range, one_of, writable_folder


def test_at_least_and_range_name_key_and_value():
    at_least("every", 1, 1)
    with pytest.raises(ConfigError, match=r"every=-1: must be >= 1"):
        at_least("every", -1, 1)
    in_range("port", 65535, 1, 65535)
    with pytest.raises(ConfigError, match=r"port=-5: must be between 1 and 65535"):
        in_range("port", -5, 1, 65535)
    with pytest.raises(ConfigError, match="kind='transformer'"):
        one_of("kind", "transformer", ["gpt", "smollm2"])


def test_writable_folder(tmp_path):
    writable_folder("work_dir", tmp_path / "new" / "deeper")  # creatable
    afile = tmp_path / "hostname"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        writable_folder("work_dir", afile)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        writable_folder("work_dir", afile / "sub")
