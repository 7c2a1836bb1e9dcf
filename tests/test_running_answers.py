"""Stop answer: it stops the answer streaming, or the one whose question was just sent (Send and
the answer's start are two events on the page, and Stop can come between them)."""

from __future__ import annotations

from tutor.page import MAX_EXPECTED_ANSWERS, RunningAnswers


def test_stop_between_sending_and_the_answers_start_stops_that_answer():
    answers = RunningAnswers()
    answers.expect("ada")
    answers.stop("ada")
    with answers.running("ada") as stop:
        assert stop.is_set()


def test_stop_while_an_answer_streams_stops_it_and_not_the_next():
    answers = RunningAnswers()
    answers.expect("ada")
    with answers.running("ada") as stop:
        assert not stop.is_set()
        answers.stop("ada")
        assert stop.is_set()
    answers.expect("ada")
    with answers.running("ada") as stop:
        assert not stop.is_set()


def test_a_stop_with_no_question_sent_is_forgotten():
    answers = RunningAnswers()
    answers.stop("ada")  # nothing sent, nothing streaming
    answers.expect("ada")
    with answers.running("ada") as stop:
        assert not stop.is_set()


def test_another_students_stop_does_not_stop_mine():
    answers = RunningAnswers()
    answers.expect("ada")
    answers.expect("grace")
    answers.stop("grace")
    with answers.running("ada") as stop:
        assert not stop.is_set()


def test_questions_waiting_for_their_answers_are_bounded():
    answers = RunningAnswers()
    for i in range(MAX_EXPECTED_ANSWERS + 1):
        answers.expect(f"student {i}")
    answers.stop("student 0")  # the oldest was forgotten: its Stop finds nothing to stop
    answers.stop(f"student {MAX_EXPECTED_ANSWERS}")
    with answers.running("student 0") as stop:
        assert not stop.is_set()
    with answers.running(f"student {MAX_EXPECTED_ANSWERS}") as stop:
        assert stop.is_set()


def test_new_conversation_does_not_stop_an_answer_about_to_begin():
    # Stopped before it began, an answer puts its question back in the chat it was asked in:
    # the old conversation would come back after "New conversation" emptied it.
    answers = RunningAnswers()
    answers.expect("ada")
    answers.stop("ada", about_to_begin=False)
    with answers.running("ada") as stop:
        assert not stop.is_set()
