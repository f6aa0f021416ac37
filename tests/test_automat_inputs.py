"""Inputs bound once per object still drive each object's own machine."""

from automat import MethodicalMachine
from automat._methodical import MethodicalInput

from incoming.automat_inputs import bind_inputs_once
from incoming.upload import Upload


class Door:
    _machine = MethodicalMachine()

    def __init__(self):
        self.log = []

    @_machine.state(initial=True)
    def closed(self):
        pass

    @_machine.state()
    def open(self):
        pass

    @_machine.input()
    def push(self, who):
        "push it"

    @_machine.output()
    def _opened(self, who):
        self.log.append(("opened", who))
        return "opened"

    @_machine.output()
    def _closed(self, who):
        self.log.append(("closed", who))
        return "closed"

    closed.upon(push, enter=open, outputs=[_opened])
    open.upon(push, enter=closed, outputs=[_closed])


bind_inputs_once(Door)


def test_an_input_is_made_once_per_object_and_each_object_keeps_its_state():
    a, b = Door(), Door()
    assert a.push is a.push and a.push is not b.push
    assert a.push("ann") == ["opened"]
    assert a.push("ann") == ["closed"]
    assert b.push("bob") == ["opened"]  # b's own state
    assert a.push("ann") == ["opened"]
    assert a.log == [("opened", "ann"), ("closed", "ann"), ("opened", "ann")]
    assert b.log == [("opened", "bob")]
    assert a.push.__name__ == "push"


def test_the_class_still_shows_the_inputs_and_uploads_are_bound():
    assert isinstance(Door.push, MethodicalInput)
    assert isinstance(Upload._chunk, MethodicalInput)
    assert "_chunk" in {name for name, value in vars(Upload).items() if hasattr(value, "_input")}
